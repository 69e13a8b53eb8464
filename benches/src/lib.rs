//! What the benches share: the JSON bid that the Kafka and JSON benches both read.

/// One JSON bid as kafka-bench produces it and json-bench decodes it: five flat fields,
/// about 100 bytes, `date_time` in epoch milliseconds.
pub fn bid(i: u64) -> String {
    format!(
        r#"{{"auction": {}, "bidder": {}, "price": {}, "channel": "channel-{}", "date_time": {}}}"#,
        i % 1000,
        (i * 7) % 10_007,
        (i * 7919) % 100_000,
        i % 10,
        1_704_067_200_000 + i
    )
}
