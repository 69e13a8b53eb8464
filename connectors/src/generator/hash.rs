//! Stateless pseudo-random values for the generating sources (`generator`, `nexmark`).
//!
//! Every random value is a hash of (seed, row or event index, field salt) through the
//! splitmix64 finaliser, never a draw from a sequential RNG: any row can be produced on its
//! own and in any order, so a batch is built column by column and a source restored from a
//! checkpoint only needs the index of its next row to continue exactly where it stopped.

/// The golden-ratio increment of splitmix64: spreads consecutive indexes over the input space.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// An odd multiplier that spreads salts apart from indexes.
const SALT_MUL: u64 = 0xD1B5_4A32_D192_ED03;
/// An odd multiplier that spreads seeds apart from indexes and salts.
const SEED_MUL: u64 = 0xF135_7AEA_2E62_A9C5;

/// The splitmix64 finaliser: a bijection on `u64` in which every input bit flips about half
/// of the output bits. Also used to derive a second value from a hash.
#[inline]
pub(crate) fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pseudo-random 64-bit value of field `salt` for row (or event) `index` under `seed`.
#[inline]
pub(crate) fn mix(seed: u64, index: u64, salt: u64) -> u64 {
    let z = index
        .wrapping_add(1)
        .wrapping_mul(GOLDEN)
        .wrapping_add(salt.wrapping_mul(SALT_MUL));
    splitmix64(z ^ seed.wrapping_mul(SEED_MUL))
}

/// A value in `0..n` from a hash, by multiply-shift (0 when `n` is 0).
#[inline]
pub(crate) fn below(hash: u64, n: u64) -> u64 {
    ((u128::from(hash) * u128::from(n)) >> 64) as u64
}

/// A value in `[0, 1)` from a hash, with 53 bits of precision.
#[inline]
pub(crate) fn unit(hash: u64) -> f64 {
    (hash >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_deterministic_and_spreads() {
        assert_eq!(mix(7, 42, 3), mix(7, 42, 3));
        assert_ne!(mix(7, 42, 3), mix(8, 42, 3));
        assert_ne!(mix(7, 42, 3), mix(7, 43, 3));
        assert_ne!(mix(7, 42, 3), mix(7, 42, 4));
        assert_ne!(mix(0, 0, 0), 0);
    }

    #[test]
    fn below_and_unit_stay_in_range() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let h = mix(1, i, 0);
            let b = below(h, 4) as usize;
            assert!(b < 4);
            counts[b] += 1;
            let u = unit(h);
            assert!((0.0..1.0).contains(&u));
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
        assert_eq!(below(u64::MAX, 0), 0);
        assert_eq!(below(u64::MAX, 10), 9);
    }
}
