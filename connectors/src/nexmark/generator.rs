//! The standard Nexmark event generator (Apache Beam's, as ported to Flink's nexmark and to
//! Arroyo), made stateless.
//!
//! Event `i` is a person, an auction or a bid by `i % 50` (0: person, 1..=3: auction, else
//! bid), its id and the ids it refers to follow from `i` as in Beam, and each random field is
//! a hash of (seed, `i`, field). A batch of one table is therefore built column by column from
//! its event ids alone, skipping the other kinds' ids arithmetically, and any event id can be
//! produced on its own (a checkpoint only needs the next event id).

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringBuilder, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::generator::hash::{below, mix, splitmix64, unit};

/// Events per Nexmark epoch: 1 person, 3 auctions and 46 bids.
const PROPORTION_DENOMINATOR: u64 = 50;
const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// People a bid or an auction may refer to: the most recent ones.
const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// Auctions a bid may refer to: the most recent ones.
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// How far past the last person or auction a reference may point.
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// `1 - 1/ratio` of bids go to a hot auction, are made by a hot bidder; of auctions, by a hot seller.
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_SELLER_RATIO: u64 = 4;
/// Hot auctions, bidders and sellers are the first of each group of this many.
const HOT_GROUP: u64 = 100;
/// `1 - 1/ratio` of bids come through one of the hot channels.
const HOT_CHANNELS_RATIO: u64 = 2;
static HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
/// Generic channels, `channel-0` .. `channel-9999`.
const CHANNELS_NUMBER: u64 = 10_000;
/// Events until `NUM_IN_FLIGHT_AUCTIONS` more auctions exist: the horizon of an auction's expiry.
const NUM_EVENTS_FOR_AUCTIONS: u64 =
    NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
/// Average byte sizes of the three kinds of events, which `extra` pads toward.
const AVG_PERSON_BYTE_SIZE: u64 = 200;
const AVG_AUCTION_BYTE_SIZE: u64 = 500;
const AVG_BID_BYTE_SIZE: u64 = 100;

static US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
static US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
static FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
static LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];

/// Event time of event 0: 2024-01-01T00:00:00Z, fixed so that runs are reproducible.
const BASE_TIME_NS: i64 = 1_704_067_200_000_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MILLI: i64 = 1_000_000;

/// Length of the pools random text is sliced from.
const POOL_LEN: usize = 8192;

// Field salts: each random field hashes (seed, event id, salt).
const S_POOL: u64 = 1;
const S_PERSON_NAME: u64 = 10;
const S_PERSON_EMAIL_USER: u64 = 11;
const S_PERSON_EMAIL_DOMAIN: u64 = 12;
const S_PERSON_CREDIT_CARD: u64 = 13;
const S_PERSON_CITY: u64 = 14;
const S_PERSON_STATE: u64 = 15;
const S_PERSON_EXTRA: u64 = 16;
const S_AUCTION_NAME: u64 = 20;
const S_AUCTION_DESCRIPTION: u64 = 21;
const S_AUCTION_INITIAL_BID: u64 = 22;
const S_AUCTION_RESERVE: u64 = 23;
const S_AUCTION_EXPIRES: u64 = 24;
const S_AUCTION_HOT_SELLER: u64 = 25;
const S_AUCTION_SELLER: u64 = 26;
const S_AUCTION_CATEGORY: u64 = 27;
const S_AUCTION_EXTRA: u64 = 28;
const S_BID_HOT_AUCTION: u64 = 30;
const S_BID_AUCTION: u64 = 31;
const S_BID_HOT_BIDDER: u64 = 32;
const S_BID_BIDDER: u64 = 33;
const S_BID_PRICE: u64 = 34;
const S_BID_CHANNEL: u64 = 35;
const S_BID_EXTRA: u64 = 36;

/// One of the three Nexmark tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Table {
    /// New people: event offsets 0 of each 50.
    Person,
    /// New auctions: event offsets 1..=3 of each 50.
    Auction,
    /// Bids: event offsets 4..50 of each 50.
    Bid,
}

impl Table {
    /// The table named by the `table` option (already lower-cased).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "person" => Some(Table::Person),
            "auction" => Some(Table::Auction),
            "bid" => Some(Table::Bid),
            _ => None,
        }
    }

    /// The event offsets (modulo 50) of this table's events: `lo..hi`.
    fn offsets(self) -> (u64, u64) {
        match self {
            Table::Person => (0, PERSON_PROPORTION),
            Table::Auction => (PERSON_PROPORTION, PERSON_PROPORTION + AUCTION_PROPORTION),
            Table::Bid => (
                PERSON_PROPORTION + AUCTION_PROPORTION,
                PROPORTION_DENOMINATOR,
            ),
        }
    }

    /// The table's schema: snake_case names, nanosecond timestamps without a time zone.
    pub(crate) fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Nanosecond, None);
        let fields = match self {
            Table::Person => vec![
                Field::new("id", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
                Field::new("email_address", DataType::Utf8, false),
                Field::new("credit_card", DataType::Utf8, false),
                Field::new("city", DataType::Utf8, false),
                Field::new("state", DataType::Utf8, false),
                Field::new("date_time", ts(), false),
                Field::new("extra", DataType::Utf8, true),
            ],
            Table::Auction => vec![
                Field::new("id", DataType::Int64, false),
                Field::new("item_name", DataType::Utf8, false),
                Field::new("description", DataType::Utf8, false),
                Field::new("initial_bid", DataType::Int64, false),
                Field::new("reserve", DataType::Int64, false),
                Field::new("date_time", ts(), false),
                Field::new("expires", ts(), false),
                Field::new("seller", DataType::Int64, false),
                Field::new("category", DataType::Int64, false),
                Field::new("extra", DataType::Utf8, true),
            ],
            Table::Bid => vec![
                Field::new("auction", DataType::Int64, false),
                Field::new("bidder", DataType::Int64, false),
                Field::new("price", DataType::Int64, false),
                Field::new("channel", DataType::Utf8, false),
                Field::new("url", DataType::Utf8, false),
                Field::new("date_time", ts(), false),
                Field::new("extra", DataType::Utf8, true),
            ],
        };
        Arc::new(Schema::new(fields))
    }

    /// Appends to `ids` the ids of this table's events from `*next` on, at most `max` of
    /// them and none at or past `limit`, and moves `*next` past the last one taken. Appends
    /// nothing once `limit` is reached.
    pub(crate) fn collect_ids(
        self,
        next: &mut u64,
        limit: Option<u64>,
        max: usize,
        ids: &mut Vec<u64>,
    ) {
        let (lo, hi) = self.offsets();
        let end = limit.unwrap_or(u64::MAX);
        while ids.len() < max {
            let epoch_start = *next - *next % PROPORTION_DENOMINATOR;
            let offset = *next % PROPORTION_DENOMINATOR;
            let (first, run_end) = if offset < lo {
                (
                    epoch_start.saturating_add(lo),
                    epoch_start.saturating_add(hi),
                )
            } else if offset >= hi {
                let next_epoch = epoch_start.saturating_add(PROPORTION_DENOMINATOR);
                (next_epoch.saturating_add(lo), next_epoch.saturating_add(hi))
            } else {
                (*next, epoch_start.saturating_add(hi))
            };
            let run_end = run_end.min(end);
            if first >= run_end {
                break;
            }
            let take = (run_end - first).min((max - ids.len()) as u64);
            ids.extend(first..first + take);
            *next = first + take;
        }
    }
}

/// Generates the columns of one Nexmark table for given event ids.
#[derive(Debug, Clone)]
pub(crate) struct NexmarkGenerator {
    table: Table,
    seed: u64,
    events_per_second: u64,
    /// Nanoseconds between events when that is a whole number (the usual case).
    spacing_ns: Option<u64>,
}

impl NexmarkGenerator {
    /// A generator of `table` for `seed`, spacing events `1/events_per_second` s apart.
    pub(crate) fn new(table: Table, seed: u64, events_per_second: u64) -> Self {
        let events_per_second = events_per_second.max(1);
        let spacing_ns = NANOS_PER_SECOND
            .is_multiple_of(events_per_second)
            .then_some(NANOS_PER_SECOND / events_per_second);
        Self {
            table,
            seed,
            events_per_second,
            spacing_ns,
        }
    }

    /// The event time of event `id`, in nanoseconds since the epoch.
    pub(crate) fn event_time(&self, id: u64) -> i64 {
        let offset = match self.spacing_ns {
            Some(spacing) => id.saturating_mul(spacing),
            None => {
                let eps = self.events_per_second;
                // `id % eps < eps <= 1e9`, so the product fits.
                (id / eps)
                    .saturating_mul(NANOS_PER_SECOND)
                    .saturating_add(id % eps * NANOS_PER_SECOND / eps)
            }
        };
        BASE_TIME_NS.saturating_add(i64::try_from(offset).unwrap_or(i64::MAX))
    }

    /// Column `index` of the table's schema for the events `ids` (all of this table's kind).
    ///
    /// # Errors
    /// An internal error for an index outside the schema.
    pub(crate) fn column(&self, index: usize, ids: &[u64]) -> Result<ArrayRef> {
        let column = match self.table {
            Table::Person => self.person_column(index, ids),
            Table::Auction => self.auction_column(index, ids),
            Table::Bid => self.bid_column(index, ids),
        };
        column.ok_or_else(|| {
            Error::Internal(format!("nexmark {:?} has no column {index}", self.table))
        })
    }

    fn person_column(&self, index: usize, ids: &[u64]) -> Option<ArrayRef> {
        let seed = self.seed;
        let pools = pools();
        Some(match index {
            0 => int64(ids, |id| to_i64(FIRST_PERSON_ID + last_base0_person_id(id))),
            1 => strings(ids, 12, |id| {
                pick(&pools.names, mix(seed, id, S_PERSON_NAME))
            }),
            2 => {
                let mut b = StringBuilder::with_capacity(ids.len(), ids.len() * 16);
                for &id in ids {
                    let _ = b.write_str(slice(
                        &pools.letters,
                        mix(seed, id, S_PERSON_EMAIL_USER),
                        3,
                        4,
                    ));
                    let _ = b.write_str("@");
                    let _ = b.write_str(slice(
                        &pools.letters,
                        mix(seed, id, S_PERSON_EMAIL_DOMAIN),
                        3,
                        2,
                    ));
                    b.append_value(".com");
                }
                Arc::new(b.finish()) as ArrayRef
            }
            3 => {
                let mut b = StringBuilder::with_capacity(ids.len(), ids.len() * 19);
                for &id in ids {
                    let mut h = mix(seed, id, S_PERSON_CREDIT_CARD);
                    for _ in 0..3 {
                        let _ = b.write_str(pools.four_digits(h));
                        let _ = b.write_str(" ");
                        h = splitmix64(h);
                    }
                    b.append_value(pools.four_digits(h));
                }
                Arc::new(b.finish()) as ArrayRef
            }
            4 => strings(ids, 8, |id| pick(&US_CITIES, mix(seed, id, S_PERSON_CITY))),
            5 => strings(ids, 2, |id| pick(&US_STATES, mix(seed, id, S_PERSON_STATE))),
            6 => self.times(ids),
            // Beam's person size before `extra`: 8 + name + email + card + city + state.
            7 => extra(
                ids,
                seed,
                S_PERSON_EXTRA,
                AVG_PERSON_BYTE_SIZE,
                8 + 12 + 16 + 19 + 7 + 2,
            ),
            _ => return None,
        })
    }

    fn auction_column(&self, index: usize, ids: &[u64]) -> Option<ArrayRef> {
        let seed = self.seed;
        let pools = pools();
        Some(match index {
            0 => int64(ids, |id| {
                to_i64(FIRST_AUCTION_ID + last_base0_auction_id(id))
            }),
            1 => strings(ids, 11, |id| {
                next_string(&pools.text, mix(seed, id, S_AUCTION_NAME), 20)
            }),
            2 => strings(ids, 51, |id| {
                next_string(&pools.text, mix(seed, id, S_AUCTION_DESCRIPTION), 100)
            }),
            3 => int64(ids, |id| price(mix(seed, id, S_AUCTION_INITIAL_BID))),
            4 => int64(ids, |id| {
                price(mix(seed, id, S_AUCTION_INITIAL_BID)).saturating_add(price(mix(
                    seed,
                    id,
                    S_AUCTION_RESERVE,
                )))
            }),
            5 => self.times(ids),
            6 => {
                let values: Vec<i64> = ids
                    .iter()
                    .map(|&id| {
                        let time = self.event_time(id);
                        // An auction lasts on average until NUM_IN_FLIGHT_AUCTIONS more exist.
                        let horizon = self
                            .event_time(id.saturating_add(NUM_EVENTS_FOR_AUCTIONS))
                            .saturating_sub(time);
                        let span = u64::try_from(horizon.saturating_mul(2)).unwrap_or(0).max(1);
                        let length = NANOS_PER_MILLI
                            .saturating_add(to_i64(below(mix(seed, id, S_AUCTION_EXPIRES), span)));
                        time.saturating_add(length)
                    })
                    .collect();
                Arc::new(TimestampNanosecondArray::from(values)) as ArrayRef
            }
            7 => int64(ids, |id| {
                let base0 = if below(mix(seed, id, S_AUCTION_HOT_SELLER), HOT_SELLER_RATIO) > 0 {
                    last_base0_person_id(id) / HOT_GROUP * HOT_GROUP
                } else {
                    next_base0_person_id(id, mix(seed, id, S_AUCTION_SELLER))
                };
                to_i64(FIRST_PERSON_ID + base0)
            }),
            8 => int64(ids, |id| {
                to_i64(FIRST_CATEGORY_ID + below(mix(seed, id, S_AUCTION_CATEGORY), NUM_CATEGORIES))
            }),
            9 => extra(
                ids,
                seed,
                S_AUCTION_EXTRA,
                AVG_AUCTION_BYTE_SIZE,
                8 + 11 + 51 + 8 * 5,
            ),
            _ => return None,
        })
    }

    fn bid_column(&self, index: usize, ids: &[u64]) -> Option<ArrayRef> {
        let seed = self.seed;
        let pools = pools();
        Some(match index {
            0 => int64(ids, |id| {
                let base0 = if below(mix(seed, id, S_BID_HOT_AUCTION), HOT_AUCTION_RATIO) > 0 {
                    last_base0_auction_id(id) / HOT_GROUP * HOT_GROUP
                } else {
                    next_base0_auction_id(id, mix(seed, id, S_BID_AUCTION))
                };
                to_i64(FIRST_AUCTION_ID + base0)
            }),
            1 => int64(ids, |id| {
                // The second person of a group, so that hot bidders and hot sellers differ.
                let base0 = if below(mix(seed, id, S_BID_HOT_BIDDER), HOT_BIDDER_RATIO) > 0 {
                    last_base0_person_id(id) / HOT_GROUP * HOT_GROUP + 1
                } else {
                    next_base0_person_id(id, mix(seed, id, S_BID_BIDDER))
                };
                to_i64(FIRST_PERSON_ID + base0)
            }),
            2 => int64(ids, |id| price(mix(seed, id, S_BID_PRICE))),
            3 => strings(ids, 8, |id| {
                pools
                    .channels
                    .get(channel_index(seed, id))
                    .map_or("", String::as_str)
            }),
            4 => strings(ids, 72, |id| {
                pools
                    .urls
                    .get(channel_index(seed, id))
                    .map_or("", String::as_str)
            }),
            5 => self.times(ids),
            6 => extra(ids, seed, S_BID_EXTRA, AVG_BID_BYTE_SIZE, 8 * 4),
            _ => return None,
        })
    }

    fn times(&self, ids: &[u64]) -> ArrayRef {
        let values: Vec<i64> = ids.iter().map(|&id| self.event_time(id)).collect();
        Arc::new(TimestampNanosecondArray::from(values))
    }
}

/// The id (from 0) of the last person created at or before event `id`.
fn last_base0_person_id(id: u64) -> u64 {
    let epoch = id / PROPORTION_DENOMINATOR;
    let offset = PERSON_PROPORTION - 1;
    epoch * PERSON_PROPORTION + offset
}

/// The id (from 0) of the last auction created at or before event `id` (0 before the first).
fn last_base0_auction_id(id: u64) -> u64 {
    let epoch = id / PROPORTION_DENOMINATOR;
    let offset = id % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // A person: the last auction of the previous epoch.
        (epoch * AUCTION_PROPORTION).saturating_sub(1)
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        // A bid: the last auction of this epoch.
        epoch * AUCTION_PROPORTION + AUCTION_PROPORTION - 1
    } else {
        epoch * AUCTION_PROPORTION + offset - PERSON_PROPORTION
    }
}

/// A random person among the active ones at event `id`, or a few ahead of them.
fn next_base0_person_id(id: u64, hash: u64) -> u64 {
    let num_people = last_base0_person_id(id) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    num_people - active + below(hash, active + PERSON_ID_LEAD)
}

/// A random auction among those likely still open at event `id`, or a few ahead of them.
fn next_base0_auction_id(id: u64, hash: u64) -> u64 {
    let max = last_base0_auction_id(id);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + below(hash, max - min + 1 + AUCTION_ID_LEAD)
}

/// A log-distributed price in cents, from 100 to 100,000,000, as Nexmark's.
fn price(hash: u64) -> i64 {
    (10f64.powf(unit(hash) * 6.0) * 100.0).round() as i64
}

/// A bid's channel: an index into [`Pools::channels`] and [`Pools::urls`], whose first
/// entries are the hot channels.
fn channel_index(seed: u64, id: u64) -> usize {
    let h = mix(seed, id, S_BID_CHANNEL);
    let hot = HOT_CHANNELS.len() as u64;
    let index = if below(h, HOT_CHANNELS_RATIO) > 0 {
        below(splitmix64(h), hot)
    } else {
        hot + below(splitmix64(h), CHANNELS_NUMBER)
    };
    index as usize
}

/// Ids are below 2^63 for any run that ends; saturate rather than wrap past it.
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An Int64 column with `f(id)` for each id.
fn int64(ids: &[u64], f: impl Fn(u64) -> i64) -> ArrayRef {
    Arc::new(Int64Array::from(
        ids.iter().map(|&id| f(id)).collect::<Vec<i64>>(),
    ))
}

/// A string column with `f(id)` for each id; `avg_len` sizes the buffer.
fn strings<'a>(ids: &[u64], avg_len: usize, f: impl Fn(u64) -> &'a str) -> ArrayRef {
    let mut b = StringBuilder::with_capacity(ids.len(), ids.len() * avg_len);
    for &id in ids {
        b.append_value(f(id));
    }
    Arc::new(b.finish())
}

/// One of `items`, chosen by `hash`.
fn pick<S: AsRef<str>>(items: &[S], hash: u64) -> &str {
    items
        .get(below(hash, items.len() as u64) as usize)
        .map_or("", AsRef::as_ref)
}

/// A slice of `pool` of `min_len + below(hash, spread)` bytes at an offset chosen by `hash`.
fn slice(pool: &str, hash: u64, min_len: u64, spread: u64) -> &str {
    let len = (min_len + below(hash, spread)).min(pool.len() as u64);
    let offset = below(splitmix64(hash), pool.len() as u64 - len + 1);
    pool.get(offset as usize..(offset + len) as usize)
        .unwrap_or("")
}

/// Nexmark's `nextString(maxLength)`: 3 to `max_len - 1` letters and spaces, trimmed.
fn next_string(pool: &str, hash: u64, max_len: u64) -> &str {
    slice(pool, hash, 3, max_len.saturating_sub(3)).trim()
}

/// Nexmark's `nextExtra`: text that pads an event of about `current` bytes toward `avg`
/// bytes on average, within ±20%.
fn extra(ids: &[u64], seed: u64, salt: u64, avg: u64, current: u64) -> ArrayRef {
    let desired = avg.saturating_sub(current);
    let delta = (desired * 2 + 5) / 10;
    let (min_len, spread) = (desired - delta, 2 * delta);
    let pools = pools();
    strings(ids, desired as usize, |id| {
        slice(&pools.text, mix(seed, id, salt), min_len, spread)
    })
}

/// Precomputed strings the columns are built from, shared by every generator.
struct Pools {
    /// Lower-case letters and, one in 13, spaces.
    text: String,
    /// Lower-case letters only.
    letters: String,
    /// `0000`, `0001`, ..., `9999`, back to back.
    digits: String,
    /// Every "First Last" name.
    names: Vec<String>,
    /// The hot channels, then `channel-0` .. `channel-9999`.
    channels: Vec<String>,
    /// The URL of each channel in `channels`.
    urls: Vec<String>,
}

impl Pools {
    fn new() -> Self {
        let mut text = String::with_capacity(POOL_LEN);
        let mut letters = String::with_capacity(POOL_LEN);
        for i in 0..POOL_LEN as u64 {
            let h = mix(0, i, S_POOL);
            let v = below(h, 13 * 26);
            text.push(if v < 26 {
                ' '
            } else {
                char::from(b'a' + (v % 26) as u8)
            });
            letters.push(char::from(b'a' + below(splitmix64(h), 26) as u8));
        }
        let mut digits = String::with_capacity(40_000);
        for n in 0..10_000 {
            let _ = write!(digits, "{n:04}");
        }
        let names: Vec<String> = FIRST_NAMES
            .iter()
            .flat_map(|f| LAST_NAMES.iter().map(move |l| format!("{f} {l}")))
            .collect();
        let generic = (0..CHANNELS_NUMBER).map(|n| (format!("channel-{n}"), n));
        let hot = HOT_CHANNELS
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u64));
        let (channels, urls): (Vec<String>, Vec<String>) = hot
            .chain(generic)
            .map(|(channel, n)| {
                let url =
                    format!("https://www.nexmark.com/{channel}/item.htm?query=1&channel_id={n}");
                (channel, url)
            })
            .unzip();
        Self {
            text,
            letters,
            digits,
            names,
            channels,
            urls,
        }
    }

    /// Four random digits.
    fn four_digits(&self, hash: u64) -> &str {
        let n = below(hash, 10_000) as usize;
        self.digits.get(4 * n..4 * n + 4).unwrap_or("0000")
    }
}

/// The shared [`Pools`], built on first use.
fn pools() -> &'static Pools {
    static POOLS: OnceLock<Pools> = OnceLock::new();
    POOLS.get_or_init(Pools::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int64Type;

    #[test]
    fn ids_follow_the_proportions() {
        for (table, per_epoch) in [(Table::Person, 1), (Table::Auction, 3), (Table::Bid, 46)] {
            let mut next = 0;
            let mut ids = Vec::new();
            let mut total = 0;
            loop {
                ids.clear();
                table.collect_ids(&mut next, Some(5000), 7, &mut ids);
                if ids.is_empty() {
                    break;
                }
                assert!(ids.iter().all(|id| kind_of(*id) == table));
                total += ids.len();
            }
            assert_eq!(total, 100 * per_epoch, "{table:?}");
        }
        let mut next = 48;
        let mut ids = Vec::new();
        Table::Auction.collect_ids(&mut next, None, 4, &mut ids);
        assert_eq!(ids, vec![51, 52, 53, 101]);
        assert_eq!(next, 102);
    }

    fn kind_of(id: u64) -> Table {
        match id % 50 {
            0 => Table::Person,
            1..=3 => Table::Auction,
            _ => Table::Bid,
        }
    }

    #[test]
    fn ids_and_references_follow_nexmark() {
        assert_eq!(last_base0_person_id(0), 0);
        assert_eq!(last_base0_person_id(149), 2);
        assert_eq!(last_base0_auction_id(1), 0);
        assert_eq!(last_base0_auction_id(3), 2);
        assert_eq!(last_base0_auction_id(4), 2);
        assert_eq!(last_base0_auction_id(50), 2);
        assert_eq!(last_base0_auction_id(0), 0);
        let g = NexmarkGenerator::new(Table::Bid, 3, 10_000);
        let ids: Vec<u64> = (0..200)
            .flat_map(|e| (4..50).map(move |o| e * 50 + o))
            .collect();
        let auctions = g.column(0, &ids).unwrap();
        let bidders = g.column(1, &ids).unwrap();
        let prices = g.column(2, &ids).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let auction = auctions.as_primitive::<Int64Type>().value(i) as u64;
            assert!(
                auction >= FIRST_AUCTION_ID
                    && auction <= FIRST_AUCTION_ID + last_base0_auction_id(*id) + AUCTION_ID_LEAD
            );
            let bidder = bidders.as_primitive::<Int64Type>().value(i) as u64;
            assert!(
                bidder >= FIRST_PERSON_ID
                    && bidder <= FIRST_PERSON_ID + last_base0_person_id(*id) + PERSON_ID_LEAD
            );
            let price = prices.as_primitive::<Int64Type>().value(i);
            assert!((100..=100_000_000).contains(&price), "{price}");
        }
        assert!(g.column(7, &ids).is_err());
    }

    #[test]
    fn times_are_spaced_by_the_event_rate() {
        let g = NexmarkGenerator::new(Table::Bid, 0, 10_000);
        assert_eq!(g.event_time(0), BASE_TIME_NS);
        assert_eq!(g.event_time(10_000), BASE_TIME_NS + 1_000_000_000);
        let g = NexmarkGenerator::new(Table::Bid, 0, 3);
        assert_eq!(g.event_time(1), BASE_TIME_NS + 333_333_333);
        assert_eq!(g.event_time(3), BASE_TIME_NS + 1_000_000_000);
    }

    #[test]
    fn strings_look_like_nexmark() {
        let person = NexmarkGenerator::new(Table::Person, 1, 10_000);
        let ids: Vec<u64> = (0..100).map(|e| e * 50).collect();
        let cards = person.column(3, &ids).unwrap();
        let cards = cards.as_string::<i32>();
        assert!(
            cards
                .iter()
                .flatten()
                .all(|c| c.len() == 19 && c.split(' ').all(|g| g.len() == 4))
        );
        let emails = person.column(2, &ids).unwrap();
        assert!(
            emails
                .as_string::<i32>()
                .iter()
                .flatten()
                .all(|e| e.contains('@') && e.ends_with(".com"))
        );
        let bid = NexmarkGenerator::new(Table::Bid, 1, 10_000);
        let ids: Vec<u64> = (4..50).collect();
        let channels = bid.column(3, &ids).unwrap();
        let urls = bid.column(4, &ids).unwrap();
        for (c, u) in channels
            .as_string::<i32>()
            .iter()
            .flatten()
            .zip(urls.as_string::<i32>().iter().flatten())
        {
            assert!(
                u.starts_with(&format!(
                    "https://www.nexmark.com/{c}/item.htm?query=1&channel_id="
                )),
                "{c} {u}"
            );
        }
        assert_eq!(channels.len(), 46);
        let hot = channels
            .as_string::<i32>()
            .iter()
            .flatten()
            .filter(|c| HOT_CHANNELS.contains(c))
            .count();
        assert!(hot > 10 && hot < 40, "{hot}");
    }
}
