//! One generated column: the `fields.<column>.*` options it was declared with, checked
//! against its type, and how its values are computed for a run of rows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int8Array, Int16Array,
    Int32Array, Int64Array, StringBuilder, TimestampMicrosecondArray, TimestampMillisecondArray,
    TimestampNanosecondArray, TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cast_utils::{Parser, string_to_timestamp_nanos};
use datafusion::arrow::datatypes::{DataType, Date32Type, Field, TimeUnit};

use super::CONNECTOR;
use super::hash::{below, mix, unit};
use crate::error::{Error, Result};

/// The column properties `fields.<column>.<property>` may name.
pub(super) const PROPERTIES: &[&str] = &[
    "kind",
    "start",
    "end",
    "length",
    "values",
    "interval_ms",
    "max_disorder_ms",
];
/// 2024-01-01T00:00:00Z: the default start of timestamps, in nanoseconds.
const DEFAULT_START_NS: i64 = 1_704_067_200_000_000_000;
/// 2024-01-01: the default start of dates, in days since 1970-01-01.
const DEFAULT_START_DAYS: i128 = 19_723;
pub(super) const NANOS_PER_MILLI: i64 = 1_000_000;
const NANOS_PER_DAY: i128 = 86_400_000_000_000;
const DEFAULT_STRING_LENGTH: u64 = 10;
const MAX_STRING_LENGTH: u64 = 65_536;
/// Characters of random strings.
const ALPHANUMERIC: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// The `fields.<column>.*` options of one column, while they are validated.
pub(super) struct Props {
    /// The column's name, as declared.
    name: String,
    /// The column's type.
    data_type: DataType,
    /// Property -> value, for the properties not yet read.
    pub(super) values: BTreeMap<String, String>,
}

impl Props {
    pub(super) fn new(field: &Field) -> Self {
        Self {
            name: field.name().clone(),
            data_type: field.data_type().clone(),
            values: BTreeMap::new(),
        }
    }

    /// The option that sets `property` of this column.
    fn key(&self, property: &str) -> String {
        format!("fields.{}.{property}", self.name.to_ascii_lowercase())
    }

    fn error(&self, property: &str, message: impl std::fmt::Display) -> Error {
        Error::option(
            CONNECTOR,
            format!("option '{}' {message}", self.key(property)),
        )
    }

    /// Takes `property`, parsed by `parse`; `what` says what a valid value is.
    fn take<T>(
        &mut self,
        property: &str,
        what: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.values.remove(property) {
            None => Ok(None),
            Some(v) => parse(v.trim())
                .map(Some)
                .ok_or_else(|| self.error(property, format!("must be {what}, got '{v}'"))),
        }
    }

    /// Takes `kind`, one of `allowed`; the first is the default.
    fn take_kind(&mut self, allowed: &'static [&'static str]) -> Result<&'static str> {
        let kind = self.values.remove("kind");
        match kind {
            None => Ok(allowed.first().copied().unwrap_or_default()),
            Some(v) => allowed
                .iter()
                .copied()
                .find(|k| k.eq_ignore_ascii_case(v.trim()))
                .ok_or_else(|| {
                    self.error(
                        "kind",
                        format!(
                            "must be one of {} for a {} column, got '{v}'",
                            allowed.join(", "),
                            self.data_type
                        ),
                    )
                }),
        }
    }

    /// Takes `start` and `end` of an integer-like range within `[min, max]`.
    fn take_range(
        &mut self,
        (min, max): (i128, i128),
        default_start: i128,
        default_end: &dyn Fn(i128) -> i128,
        what: &str,
        parse: fn(&str) -> Option<i128>,
    ) -> Result<(i128, Option<u64>)> {
        let start = self.take("start", what, parse)?.unwrap_or(default_start);
        if !(min..=max).contains(&start) {
            return Err(self.error(
                "start",
                format!("is out of range for a {} column", self.data_type),
            ));
        }
        let end = self
            .take("end", what, parse)?
            .unwrap_or_else(|| default_end(start).clamp(min, max));
        if !(min..=max).contains(&end) {
            return Err(self.error(
                "end",
                format!("is out of range for a {} column", self.data_type),
            ));
        }
        if end < start {
            return Err(self.error("end", "must not be less than the start"));
        }
        // A span of 2^64 values does not fit: `None`.
        Ok((start, u64::try_from(end - start + 1).ok()))
    }

    /// Rejects properties left over: they do not apply to this column and kind.
    fn finish(self, kind: &str) -> Result<()> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(property) => Err(self.error(
                property,
                format!(
                    "does not apply to column '{}' ({}, kind {kind})",
                    self.name, self.data_type
                ),
            )),
        }
    }
}

/// How one column's values are made.
#[derive(Debug, Clone)]
pub(super) enum Column {
    /// Integers and dates (in days): `i128` values narrowed to `data_type`.
    Int {
        data_type: DataType,
        values: IntValues,
    },
    /// Floats, made as `f64`.
    Float {
        data_type: DataType,
        values: FloatValues,
    },
    /// Booleans: alternating from `false`, or random.
    Bool { sequence: bool },
    /// Strings, made as Utf8 and cast to `data_type`.
    Str {
        data_type: DataType,
        values: StrValues,
    },
    /// Timestamps, made in nanoseconds and converted to `unit`.
    Timestamp {
        unit: TimeUnit,
        tz: Option<Arc<str>>,
        values: TimeValues,
    },
}

impl Column {
    /// The most bytes one value of this column takes in a batch (its offsets included).
    pub(super) fn max_value_bytes(&self) -> u64 {
        match self {
            Column::Int { .. } | Column::Float { .. } | Column::Timestamp { .. } => 16,
            Column::Bool { .. } => 1,
            Column::Str { values, .. } => {
                8 + match values {
                    StrValues::Random { length } => *length as u64,
                    StrValues::Values(v) => v.iter().map(|s| s.len() as u64).max().unwrap_or(0),
                    StrValues::Sequence(_) => 40,
                }
            }
        }
    }
}

/// Integers from `start`: a sequence cycling after `span` values, or uniformly random among
/// `span` values (`None`: 2^64 values).
#[derive(Debug, Clone)]
pub(super) struct IntValues {
    random: bool,
    start: i128,
    span: Option<u64>,
}

impl IntValues {
    fn value(&self, seed: u64, salt: u64, row: u64) -> i128 {
        let offset = if self.random {
            let h = mix(seed, row, salt);
            self.span.map_or(h, |span| below(h, span))
        } else {
            self.span.map_or(row, |span| row % span)
        };
        self.start + i128::from(offset)
    }
}

#[derive(Debug, Clone)]
pub(super) enum FloatValues {
    /// `start`, `start + 1`, ... cycling after `span` values.
    Sequence { start: f64, span: Option<u64> },
    /// Uniform in `[low, low + width)`.
    Random { low: f64, width: f64 },
}

#[derive(Debug, Clone)]
pub(super) enum StrValues {
    /// Random letters and digits.
    Random { length: usize },
    /// One of a list, at random.
    Values(Vec<String>),
    /// The decimal digits of an integer sequence.
    Sequence(IntValues),
}

#[derive(Debug, Clone)]
pub(super) enum TimeValues {
    /// Row `i` at `start + i * interval`, moved back by up to `max_disorder`.
    EventTime {
        start_ns: i64,
        interval_ns: i64,
        max_disorder_ns: u64,
    },
    /// Uniformly random nanoseconds.
    Random(IntValues),
}

/// The range of values of an integer type.
fn int_bounds(data_type: &DataType) -> Option<(i128, i128)> {
    Some(match data_type {
        DataType::Int8 => (i128::from(i8::MIN), i128::from(i8::MAX)),
        DataType::Int16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        DataType::Int32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        DataType::Int64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        DataType::UInt8 => (0, i128::from(u8::MAX)),
        DataType::UInt16 => (0, i128::from(u16::MAX)),
        DataType::UInt32 => (0, i128::from(u32::MAX)),
        DataType::UInt64 => (0, i128::from(u64::MAX)),
        _ => return None,
    })
}

fn parse_int(s: &str) -> Option<i128> {
    s.parse::<i128>().ok()
}

fn parse_float(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// An ISO-8601 timestamp or epoch milliseconds, in nanoseconds.
fn parse_timestamp_ns(s: &str) -> Option<i128> {
    match s.parse::<i64>() {
        Ok(millis) => Some(i128::from(millis) * i128::from(NANOS_PER_MILLI)),
        Err(_) => string_to_timestamp_nanos(s).ok().map(i128::from),
    }
}

/// A date (`YYYY-MM-DD`) or a number of days since 1970-01-01.
fn parse_days(s: &str) -> Option<i128> {
    match s.parse::<i64>() {
        Ok(days) => Some(i128::from(days)),
        Err(_) => Date32Type::parse(s).map(i128::from),
    }
}

/// A non-negative number of milliseconds, in nanoseconds.
fn parse_millis_ns(s: &str) -> Option<i64> {
    let millis = s
        .parse::<f64>()
        .ok()
        .filter(|m| m.is_finite() && *m >= 0.0)?;
    let nanos = (millis * NANOS_PER_MILLI as f64).round();
    (nanos < i64::MAX as f64).then_some(nanos as i64)
}

impl Column {
    /// How to make the column `props` describes.
    pub(super) fn try_new(mut props: Props, default_interval_ns: i64) -> Result<Self> {
        let data_type = props.data_type.clone();
        let (column, kind) = match &data_type {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => {
                let bounds = int_bounds(&data_type).unwrap_or((0, 0));
                let kind = props.take_kind(&["sequence", "random"])?;
                let random = kind == "random";
                let default_start = if random { bounds.0 } else { 0 };
                let (start, span) = props.take_range(
                    bounds,
                    default_start,
                    &|_: i128| bounds.1,
                    "an integer",
                    parse_int,
                )?;
                (
                    Column::Int {
                        data_type: data_type.clone(),
                        values: IntValues {
                            random,
                            start,
                            span,
                        },
                    },
                    kind,
                )
            }
            DataType::Date32 => {
                let bounds = (i128::from(i32::MIN), i128::from(i32::MAX));
                let kind = props.take_kind(&["random", "sequence"])?;
                let random = kind == "random";
                // A random date defaults to the year from its start; a sequence runs on.
                let default_days: Option<i128> = random.then_some(365);
                let default_end = |start: i128| default_days.map_or(bounds.1, |days| start + days);
                let what = "a date (YYYY-MM-DD) or a number of days since 1970-01-01";
                let (start, span) =
                    props.take_range(bounds, DEFAULT_START_DAYS, &default_end, what, parse_days)?;
                (
                    Column::Int {
                        data_type: data_type.clone(),
                        values: IntValues {
                            random,
                            start,
                            span,
                        },
                    },
                    kind,
                )
            }
            DataType::Float32 | DataType::Float64 => {
                let kind = props.take_kind(&["random", "sequence"])?;
                let start = props.take("start", "a number", parse_float)?.unwrap_or(0.0);
                let end = props.take("end", "a number", parse_float)?;
                if end.is_some_and(|end| end < start) {
                    return Err(props.error("end", "must not be less than the start"));
                }
                let values = if kind == "random" {
                    FloatValues::Random {
                        low: start,
                        width: end.unwrap_or(start + 1.0) - start,
                    }
                } else {
                    // `as` saturates: a huge range simply never cycles.
                    FloatValues::Sequence {
                        start,
                        span: end.map(|end| ((end - start).floor() as u64).saturating_add(1)),
                    }
                };
                (
                    Column::Float {
                        data_type: data_type.clone(),
                        values,
                    },
                    kind,
                )
            }
            DataType::Boolean => {
                let kind = props.take_kind(&["random", "sequence"])?;
                (
                    Column::Bool {
                        sequence: kind == "sequence",
                    },
                    kind,
                )
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let kind = props.take_kind(&["random", "sequence"])?;
                let values = if kind == "sequence" {
                    let bounds = (i128::from(i64::MIN), i128::from(i64::MAX));
                    let (start, span) = props.take_range(
                        bounds,
                        0,
                        &|_: i128| bounds.1,
                        "an integer",
                        parse_int,
                    )?;
                    StrValues::Sequence(IntValues {
                        random: false,
                        start,
                        span,
                    })
                } else {
                    let values = props.take("values", "a comma-separated list", |s| {
                        let list: Vec<String> =
                            s.split(',').map(|v| v.trim().to_string()).collect();
                        (!s.is_empty()).then_some(list)
                    })?;
                    let length_what = format!("a length from 0 to {MAX_STRING_LENGTH}");
                    let length = props.take("length", &length_what, |s| {
                        s.parse::<u64>().ok().filter(|n| *n <= MAX_STRING_LENGTH)
                    })?;
                    match (values, length) {
                        (Some(_), Some(_)) => {
                            return Err(props.error(
                                "length",
                                "cannot be combined with the option 'values' of the same column",
                            ));
                        }
                        (Some(values), None) => StrValues::Values(values),
                        (None, length) => StrValues::Random {
                            length: length.unwrap_or(DEFAULT_STRING_LENGTH) as usize,
                        },
                    }
                };
                (
                    Column::Str {
                        data_type: data_type.clone(),
                        values,
                    },
                    kind,
                )
            }
            DataType::Timestamp(unit, tz) => {
                let kind = props.take_kind(&["event_time", "random"])?;
                let what = "an ISO-8601 timestamp or a number of epoch milliseconds";
                let values = if kind == "event_time" {
                    let start = props.take("start", what, parse_timestamp_ns)?.map_or(
                        Ok(DEFAULT_START_NS),
                        |ns| {
                            i64::try_from(ns).map_err(|_| {
                                props.error("start", "is out of range for a timestamp")
                            })
                        },
                    )?;
                    let ms = "a non-negative number of milliseconds";
                    let interval_ns = props
                        .take("interval_ms", ms, parse_millis_ns)?
                        .unwrap_or(default_interval_ns);
                    let max_disorder_ns = props
                        .take("max_disorder_ms", ms, parse_millis_ns)?
                        .unwrap_or(0);
                    TimeValues::EventTime {
                        start_ns: start,
                        interval_ns,
                        max_disorder_ns: u64::try_from(max_disorder_ns).unwrap_or(0),
                    }
                } else {
                    let bounds = (i128::from(i64::MIN), i128::from(i64::MAX));
                    let default_end = |start: i128| start + NANOS_PER_DAY;
                    let (start, span) = props.take_range(
                        bounds,
                        i128::from(DEFAULT_START_NS),
                        &default_end,
                        what,
                        parse_timestamp_ns,
                    )?;
                    TimeValues::Random(IntValues {
                        random: true,
                        start,
                        span,
                    })
                };
                (
                    Column::Timestamp {
                        unit: *unit,
                        tz: tz.clone(),
                        values,
                    },
                    kind,
                )
            }
            other => {
                return Err(Error::option(
                    CONNECTOR,
                    format!(
                        "column '{}' has type {other}, which the generator cannot produce",
                        props.name
                    ),
                ));
            }
        };
        props.finish(kind)?;
        Ok(column)
    }

    /// The column's values for rows `first..first + rows`; `column` is its index, which
    /// salts its random values.
    pub(super) fn build(
        &self,
        seed: u64,
        column: u64,
        first: u64,
        rows: usize,
    ) -> Result<ArrayRef> {
        // Random strings take one hash per 8 characters: salts `column << 20 | chunk`.
        let salt = column << 20;
        let range = first..first.saturating_add(rows as u64);
        let array: ArrayRef = match self {
            Column::Int { data_type, values } => {
                let v: Vec<i128> = range.map(|row| values.value(seed, salt, row)).collect();
                int_array(data_type, &v)?
            }
            Column::Float { data_type, values } => {
                let v: Vec<f64> = match values {
                    FloatValues::Sequence { start, span } => range
                        .map(|row| start + span.map_or(row, |span| row % span) as f64)
                        .collect(),
                    FloatValues::Random { low, width } => range
                        .map(|row| low + unit(mix(seed, row, salt)) * width)
                        .collect(),
                };
                match data_type {
                    DataType::Float32 => {
                        Arc::new(Float32Array::from_iter_values(v.iter().map(|x| *x as f32)))
                    }
                    _ => Arc::new(Float64Array::from(v)),
                }
            }
            Column::Bool { sequence } => {
                let v: Vec<bool> = if *sequence {
                    range.map(|row| row % 2 == 1).collect()
                } else {
                    range.map(|row| mix(seed, row, salt) & 1 == 1).collect()
                };
                Arc::new(BooleanArray::from(v))
            }
            Column::Str { data_type, values } => {
                let utf8 = string_array(values, seed, salt, range, rows);
                if data_type == &DataType::Utf8 {
                    utf8
                } else {
                    cast(&utf8, data_type)?
                }
            }
            Column::Timestamp { unit, tz, values } => {
                let ns: Vec<i64> = match values {
                    TimeValues::EventTime {
                        start_ns,
                        interval_ns,
                        max_disorder_ns,
                    } => range
                        .map(|row| {
                            let step = i64::try_from(row)
                                .unwrap_or(i64::MAX)
                                .saturating_mul(*interval_ns);
                            let jitter = if *max_disorder_ns == 0 {
                                0
                            } else {
                                i64::try_from(below(mix(seed, row, salt), max_disorder_ns + 1))
                                    .unwrap_or(0)
                            };
                            start_ns.saturating_add(step).saturating_sub(jitter)
                        })
                        .collect(),
                    TimeValues::Random(values) => range
                        .map(|row| i64::try_from(values.value(seed, salt, row)).unwrap_or(i64::MAX))
                        .collect(),
                };
                timestamp_array(*unit, tz.clone(), ns)
            }
        };
        Ok(array)
    }
}

/// A Utf8 column of `rows` strings for the rows of `range`.
fn string_array(
    values: &StrValues,
    seed: u64,
    salt: u64,
    range: std::ops::Range<u64>,
    rows: usize,
) -> ArrayRef {
    match values {
        StrValues::Random { length } => {
            let mut b = StringBuilder::with_capacity(rows, rows * length);
            let mut buf = String::with_capacity(*length);
            for row in range {
                buf.clear();
                let mut h = 0;
                for i in 0..*length {
                    if i % 8 == 0 {
                        h = mix(seed, row, salt | (i / 8) as u64);
                    }
                    let byte = (h >> (8 * (i % 8))) as u8;
                    let c = ALPHANUMERIC
                        .get((usize::from(byte) * ALPHANUMERIC.len()) >> 8)
                        .copied()
                        .unwrap_or(b'a');
                    buf.push(char::from(c));
                }
                b.append_value(&buf);
            }
            Arc::new(b.finish())
        }
        StrValues::Values(list) => {
            let mut b =
                StringBuilder::with_capacity(rows, rows * list.first().map_or(0, String::len));
            for row in range {
                let pick = below(mix(seed, row, salt), list.len() as u64) as usize;
                b.append_value(list.get(pick).map_or("", String::as_str));
            }
            Arc::new(b.finish())
        }
        StrValues::Sequence(values) => {
            let mut b = StringBuilder::with_capacity(rows, rows * 8);
            for row in range {
                let _ = write!(b, "{}", values.value(seed, salt, row));
                b.append_value("");
            }
            Arc::new(b.finish())
        }
    }
}

/// Narrows `values`, already within the type's range, to an integer or Date32 column.
fn int_array(data_type: &DataType, values: &[i128]) -> Result<ArrayRef> {
    let array: ArrayRef = match data_type {
        DataType::Int8 => Arc::new(Int8Array::from_iter_values(values.iter().map(|v| *v as i8))),
        DataType::Int16 => Arc::new(Int16Array::from_iter_values(
            values.iter().map(|v| *v as i16),
        )),
        DataType::Int32 => Arc::new(Int32Array::from_iter_values(
            values.iter().map(|v| *v as i32),
        )),
        DataType::Int64 => Arc::new(Int64Array::from_iter_values(
            values.iter().map(|v| *v as i64),
        )),
        DataType::UInt8 => Arc::new(UInt8Array::from_iter_values(
            values.iter().map(|v| *v as u8),
        )),
        DataType::UInt16 => Arc::new(UInt16Array::from_iter_values(
            values.iter().map(|v| *v as u16),
        )),
        DataType::UInt32 => Arc::new(UInt32Array::from_iter_values(
            values.iter().map(|v| *v as u32),
        )),
        DataType::UInt64 => Arc::new(UInt64Array::from_iter_values(
            values.iter().map(|v| *v as u64),
        )),
        DataType::Date32 => Arc::new(Date32Array::from_iter_values(
            values.iter().map(|v| *v as i32),
        )),
        other => {
            return Err(Error::Internal(format!(
                "generator: {other} is not an integer type"
            )));
        }
    };
    Ok(array)
}

/// A timestamp column in `unit` from nanoseconds (rounded down).
fn timestamp_array(unit: TimeUnit, tz: Option<Arc<str>>, mut ns: Vec<i64>) -> ArrayRef {
    let divisor = match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    };
    if divisor != 1 {
        ns.iter_mut().for_each(|v| *v = v.div_euclid(divisor));
    }
    match unit {
        TimeUnit::Second => Arc::new(TimestampSecondArray::from(ns).with_timezone_opt(tz)),
        TimeUnit::Millisecond => {
            Arc::new(TimestampMillisecondArray::from(ns).with_timezone_opt(tz))
        }
        TimeUnit::Microsecond => {
            Arc::new(TimestampMicrosecondArray::from(ns).with_timezone_opt(tz))
        }
        TimeUnit::Nanosecond => Arc::new(TimestampNanosecondArray::from(ns).with_timezone_opt(tz)),
    }
}
