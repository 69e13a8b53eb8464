//! The fast path of the JSON format: flat objects parsed by simd-json and appended straight
//! to Arrow builders, one column per declared field.
//!
//! Arrow's JSON decoder is the reference for what a record means. This path only takes a
//! chunk when it is sure to produce exactly what that decoder would: every record one JSON
//! object whose declared fields hold a JSON value of the column's own kind (an integer for
//! an integer column, a string for a string column, and so on) or `null`. Undeclared fields
//! may hold anything, nested or not. Anything else, from a string where a number is declared
//! to a malformed record or a duplicate key, makes [`FlatDecoder::decode`] return `None`, and
//! the caller decodes the chunk with Arrow's decoder, which converts what it can and reports
//! the bad records.

use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder,
    Int16Builder, Int32Builder, Int64Builder, PrimitiveBuilder, StringBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::kernels::cast_utils::string_to_datetime;
use datafusion::arrow::datatypes::{ArrowPrimitiveType, DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use simd_json::{Buffers, INPUT_PADDING, Node, StaticNode, Tape};

use crate::format::batch_with_rows;

/// Decodes chunks of flat JSON objects into batches of one schema, or declines the chunk.
pub(super) struct FlatDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    names: Vec<Box<[u8]>>,
    /// Whether a float column exists, for the `-0` check.
    has_float: bool,
    /// One record, followed by the padding simd-json reads past the end.
    scratch: Vec<u8>,
    buffers: Buffers,
    /// The tape's allocation between records; its nodes never outlive one record.
    tape: Tape<'static>,
    /// Per record: whether column `i` was set.
    seen: Vec<bool>,
}

impl std::fmt::Debug for FlatDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatDecoder")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A column builder of a type this path decodes.
enum Column {
    Boolean(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Utf8(StringBuilder),
    /// Epoch milliseconds without a time zone, as the reader schema declares timestamps.
    TimestampMs(TimestampMillisecondBuilder),
}

impl Column {
    /// A builder for `data_type`, or `None` when this path does not decode it.
    fn try_new(data_type: &DataType) -> Option<Self> {
        Some(match data_type {
            DataType::Boolean => Self::Boolean(BooleanBuilder::new()),
            DataType::Int8 => Self::Int8(Int8Builder::new()),
            DataType::Int16 => Self::Int16(Int16Builder::new()),
            DataType::Int32 => Self::Int32(Int32Builder::new()),
            DataType::Int64 => Self::Int64(Int64Builder::new()),
            DataType::UInt8 => Self::UInt8(UInt8Builder::new()),
            DataType::UInt16 => Self::UInt16(UInt16Builder::new()),
            DataType::UInt32 => Self::UInt32(UInt32Builder::new()),
            DataType::UInt64 => Self::UInt64(UInt64Builder::new()),
            DataType::Float32 => Self::Float32(Float32Builder::new()),
            DataType::Float64 => Self::Float64(Float64Builder::new()),
            DataType::Utf8 => Self::Utf8(StringBuilder::new()),
            DataType::Timestamp(TimeUnit::Millisecond, None) => {
                Self::TimestampMs(TimestampMillisecondBuilder::new())
            }
            _ => return None,
        })
    }

    fn is_float(&self) -> bool {
        matches!(self, Self::Float32(_) | Self::Float64(_))
    }

    fn builder(&mut self) -> &mut dyn ArrayBuilder {
        match self {
            Self::Boolean(b) => b,
            Self::Int8(b) => b,
            Self::Int16(b) => b,
            Self::Int32(b) => b,
            Self::Int64(b) => b,
            Self::UInt8(b) => b,
            Self::UInt16(b) => b,
            Self::UInt32(b) => b,
            Self::UInt64(b) => b,
            Self::Float32(b) => b,
            Self::Float64(b) => b,
            Self::Utf8(b) => b,
            Self::TimestampMs(b) => b,
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Boolean(b) => b.append_null(),
            Self::Int8(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::UInt8(b) => b.append_null(),
            Self::UInt16(b) => b.append_null(),
            Self::UInt32(b) => b.append_null(),
            Self::UInt64(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::TimestampMs(b) => b.append_null(),
        }
    }

    /// Appends `node`, or returns `false` when Arrow's decoder might read it otherwise (or
    /// reject it), leaving the column unchanged.
    fn append(&mut self, node: &Node<'_>) -> bool {
        if matches!(node, Node::Static(StaticNode::Null)) {
            self.append_null();
            return true;
        }
        match self {
            Self::Boolean(b) => match node {
                Node::Static(StaticNode::Bool(v)) => b.append_value(*v),
                _ => return false,
            },
            Self::Int8(b) => return append_integer(b, node),
            Self::Int16(b) => return append_integer(b, node),
            Self::Int32(b) => return append_integer(b, node),
            Self::Int64(b) => return append_integer(b, node),
            Self::UInt8(b) => return append_integer(b, node),
            Self::UInt16(b) => return append_integer(b, node),
            Self::UInt32(b) => return append_integer(b, node),
            Self::UInt64(b) => return append_integer(b, node),
            // Integers convert with one rounding, as parsing their text does. A fractional
            // number would be rounded twice on the way to f32, so it is left to Arrow.
            Self::Float32(b) => match node {
                Node::Static(StaticNode::I64(v)) => b.append_value(*v as f32),
                Node::Static(StaticNode::U64(v)) => b.append_value(*v as f32),
                _ => return false,
            },
            Self::Float64(b) => match node {
                Node::Static(StaticNode::I64(v)) => b.append_value(*v as f64),
                Node::Static(StaticNode::U64(v)) => b.append_value(*v as f64),
                Node::Static(StaticNode::F64(v)) if v.is_finite() => b.append_value(*v),
                _ => return false,
            },
            Self::Utf8(b) => match node {
                // Past i32 offsets the builder would panic; Arrow's decoder reports an error.
                Node::String(s) if b.values_slice().len() + s.len() > i32::MAX as usize => {
                    return false;
                }
                Node::String(s) => b.append_value(s),
                // What Arrow's decoder writes for booleans with primitive coercion; numbers
                // keep their text there, which the tape no longer has.
                Node::Static(StaticNode::Bool(v)) => {
                    b.append_value(if *v { "true" } else { "false" })
                }
                _ => return false,
            },
            Self::TimestampMs(b) => match node {
                Node::Static(StaticNode::I64(v)) => b.append_value(*v),
                Node::Static(StaticNode::U64(v)) => match i64::try_from(*v) {
                    Ok(v) => b.append_value(v),
                    Err(_) => return false,
                },
                Node::String(s) => match string_to_datetime(&Utc, s) {
                    Ok(t) => b.append_value(t.timestamp_millis()),
                    Err(_) => return false,
                },
                _ => return false,
            },
        }
        true
    }
}

/// Appends a JSON integer that fits the column's type; anything else is left to Arrow.
fn append_integer<T>(b: &mut PrimitiveBuilder<T>, node: &Node<'_>) -> bool
where
    T: ArrowPrimitiveType,
    T::Native: TryFrom<i64> + TryFrom<u64>,
{
    let value = match node {
        Node::Static(StaticNode::I64(v)) => T::Native::try_from(*v).ok(),
        Node::Static(StaticNode::U64(v)) => T::Native::try_from(*v).ok(),
        _ => None,
    };
    match value {
        Some(v) => {
            b.append_value(v);
            true
        }
        None => false,
    }
}

impl FlatDecoder {
    /// A decoder for `schema`, or `None` when a column's type is not one this path decodes
    /// or two columns share a name (Arrow's decoder fills only the first).
    pub(super) fn try_new(schema: &SchemaRef) -> Option<Self> {
        let fields = schema.fields();
        if (1..fields.len()).any(|i| fields[..i].iter().any(|f| f.name() == fields[i].name())) {
            return None;
        }
        let columns = schema
            .fields()
            .iter()
            .map(|f| Column::try_new(f.data_type()))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            schema: Arc::clone(schema),
            has_float: columns.iter().any(Column::is_float),
            names: schema
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().into())
                .collect(),
            seen: vec![false; columns.len()],
            columns,
            scratch: Vec::new(),
            buffers: Buffers::new(1024),
            tape: Tape(Vec::new()),
        })
    }

    /// Decodes `records`, each one JSON value, into a batch of the schema; `None` when any
    /// record is not certain to decode here as Arrow's decoder decodes it.
    pub(super) fn decode<'a>(
        &mut self,
        records: impl Iterator<Item = &'a [u8]>,
    ) -> Option<RecordBatch> {
        let (mut rows, mut ok) = (0, true);
        for record in records {
            if !self.record(record) {
                ok = false;
                break;
            }
            rows += 1;
        }
        // Finishing also empties the builders for the next chunk, taken or declined.
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .map(|c| c.builder().finish())
            .collect();
        if !ok {
            return None;
        }
        batch_with_rows(Arc::clone(&self.schema), arrays, rows).ok()
    }

    /// Appends one record to every column; `false` when the chunk must go to Arrow.
    fn record(&mut self, record: &[u8]) -> bool {
        if self.has_float && has_negative_zero_integer(record) {
            // simd-json reads `-0` as the integer 0, which loses the sign of a float `-0`.
            return false;
        }
        let Self {
            columns,
            names,
            scratch,
            buffers,
            tape: spare,
            seen,
            ..
        } = self;
        scratch.clear();
        scratch.extend_from_slice(record);
        scratch.resize(record.len() + INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(spare, Tape(Vec::new())).reset();
        let ok = simd_json::fill_tape_padded(scratch, record.len(), buffers, &mut tape).is_ok()
            && append_object(&tape.0, columns, names, seen);
        *spare = tape.reset();
        ok
    }
}

/// Appends the fields of the object `nodes` (a whole tape) to `columns`, NULL where a field
/// is missing; `false` when the tape is not one object of declared values of the right kind,
/// or names a declared field twice.
fn append_object(
    nodes: &[Node<'_>],
    columns: &mut [Column],
    names: &[Box<[u8]>],
    seen: &mut [bool],
) -> bool {
    // A parsed tape is one value; the length check only guards the walk below.
    let Some(Node::Object { len, count }) = nodes.first() else {
        return false;
    };
    if *count + 1 != nodes.len() {
        return false;
    }
    seen.fill(false);
    // Records usually name their fields in one order; the next column is tried first.
    let mut next = 0;
    let mut at = 1;
    for _ in 0..*len {
        let (Some(Node::String(key)), Some(value)) = (nodes.get(at), nodes.get(at + 1)) else {
            return false;
        };
        let key = key.as_bytes();
        let column = if names.get(next).is_some_and(|n| **n == *key) {
            Some(next)
        } else {
            names.iter().position(|n| **n == *key)
        };
        if let Some(i) = column {
            let (Some(done), Some(c)) = (seen.get_mut(i), columns.get_mut(i)) else {
                return false;
            };
            if *done || !c.append(value) {
                // A second value for a field (Arrow keeps the last), or one to convert: the
                // chunk is declined, and the half-built row goes with it.
                return false;
            }
            *done = true;
            next = i + 1;
        }
        at += 1 + match value {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
    }
    for (c, done) in columns.iter_mut().zip(seen.iter()) {
        if !*done {
            c.append_null();
        }
    }
    true
}

/// Whether `record` holds the number `-0` (not `-0.5` or `-0e1`): it may be a float `-0`,
/// whose sign simd-json's integer 0 does not keep. A string holding `-0` also counts, which
/// only sends the chunk down the slow path.
fn has_negative_zero_integer(record: &[u8]) -> bool {
    memchr::memmem::find_iter(record, b"-0")
        .any(|i| !matches!(record.get(i + 2), Some(b'.' | b'e' | b'E' | b'0'..=b'9')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::json::ReaderBuilder;

    fn schema(fields: &[(&str, DataType)]) -> SchemaRef {
        Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// What Arrow's decoder makes of `lines`, configured as the JSON format configures it.
    fn arrow(schema: &SchemaRef, lines: &[&str]) -> Option<RecordBatch> {
        let mut d = ReaderBuilder::new(Arc::clone(schema))
            .with_batch_size(lines.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()
            .ok()?;
        for line in lines {
            let data = format!("{line}\n");
            let used = d.decode(data.as_bytes()).ok()?;
            if used != data.len() {
                return None;
            }
        }
        if d.len() != lines.len() {
            return None;
        }
        d.flush().ok()?
    }

    fn flat(schema: &SchemaRef, lines: &[&str]) -> Option<RecordBatch> {
        let mut d = FlatDecoder::try_new(schema).expect("a schema of flat columns");
        d.decode(lines.iter().map(|l| l.as_bytes()))
    }

    fn all_types() -> SchemaRef {
        schema(&[
            ("b", DataType::Boolean),
            ("i8", DataType::Int8),
            ("i64", DataType::Int64),
            ("u16", DataType::UInt16),
            ("u64", DataType::UInt64),
            ("f32", DataType::Float32),
            ("f64", DataType::Float64),
            ("s", DataType::Utf8),
            ("t", DataType::Timestamp(TimeUnit::Millisecond, None)),
        ])
    }

    #[test]
    fn flat_records_decode_as_arrow_decodes_them() {
        let s = all_types();
        let lines = [
            r#"{"b":true,"i8":-128,"i64":9223372036854775807,"u16":65535,"u64":18446744073709551615,"f32":16777217,"f64":1.5e-7,"s":"a\"\u00e9\ud83d\ude00","t":1704067200000}"#,
            r#"{"t":"2024-01-01T00:00:01.5Z","s":false,"f64":-12,"extra":{"x":[1,{"y":null}],"z":"}"}}"#,
            r#"{"i64":null,"nested":[[],[[]]],"s":"","f64":0.1}"#,
            r#"  { }  "#,
            r#"{"s":"line\nbreak","t":"2024-06-30 12:00:00","u64":0,"f64":-0.0}"#,
        ];
        let expected = arrow(&s, &lines).expect("arrow decodes them");
        assert_eq!(flat(&s, &lines), Some(expected));
    }

    #[test]
    fn declines_what_arrow_converts_or_rejects() {
        let s = all_types();
        for line in [
            r#"{"i64":"5"}"#,                      // a numeric string: Arrow parses it
            r#"{"i64":1.5}"#,                      // a fraction for an integer: Arrow truncates it
            r#"{"i8":200}"#,                       // out of range: Arrow rejects it
            r#"{"s":12.50}"#,                      // a number as a string keeps its text in Arrow
            r#"{"f32":0.1}"#,                      // f32 from a fraction: Arrow rounds once
            r#"{"f64":-0}"#,                       // negative zero
            r#"{"b":1}"#,                          // not a boolean
            r#"{"t":"yesterday"}"#,                // not a timestamp
            r#"{"t":1.5}"#,                        // a fractional timestamp
            r#"{"s":{"a":1}}"#,                    // nested value in a declared column
            r#"[1,2]"#,                            // not an object
            r#"null"#,                             // not an object
            r#"{"i64":1} {"i64":2}"#,              // two values
            r#"{"i64":1"#,                         // incomplete
            "{\"s\":\"tab\there\"}", // a raw control character: simd-json is stricter than Arrow
            r#"{"i64":123456789012345678901234}"#, // too big for simd-json's integers
        ] {
            assert_eq!(flat(&s, &[r#"{"i64":1}"#, line]), None, "{line}");
        }
    }

    #[test]
    fn a_second_value_for_a_field_is_declined_not_appended() {
        let s = schema(&[("a", DataType::Int64), ("b", DataType::Int64)]);
        let mut d = FlatDecoder::try_new(&s).expect("flat schema");
        assert!(d.record(br#"{"a":1,"b":2}"#));
        // Arrow keeps the last value; this path declines the chunk instead.
        assert!(!d.record(br#"{"a":1,"a":2}"#));
        assert!(!d.record(br#"{"b":1,"a":2,"b":3}"#));
    }

    #[test]
    fn escaped_keys_whitespace_and_wide_schemas_decode_as_arrow_decodes_them() {
        // 20 fields: Arrow looks wide schemas up in a map, narrow ones by position.
        let names: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
        let fields: Vec<(&str, DataType)> = names
            .iter()
            .map(|n| (n.as_str(), DataType::Int64))
            .collect();
        let wide = schema(&fields);
        let lines = [
            "{ \"c\\u0031\" : -0 ,\n\t\"c19\":7, \"c3\" :null }",
            r#"{"c5":1,"c4":2,"c0":3,"x":{"c1":9}}"#,
        ];
        let expected = arrow(&wide, &lines).expect("arrow decodes them");
        assert_eq!(flat(&wide, &lines), Some(expected));
    }

    #[test]
    fn schemas_with_other_types_or_repeated_names_are_left_to_arrow() {
        let repeated = schema(&[("a", DataType::Int64), ("a", DataType::Int64)]);
        assert!(FlatDecoder::try_new(&repeated).is_none());
        assert!(FlatDecoder::try_new(&schema(&[("d", DataType::Date32)])).is_none());
        let tz = DataType::Timestamp(TimeUnit::Millisecond, Some("+01:00".into()));
        assert!(FlatDecoder::try_new(&schema(&[("t", tz)])).is_none());
    }

    #[test]
    fn a_declined_chunk_leaves_nothing_behind() {
        let s = schema(&[("a", DataType::Int64), ("b", DataType::Utf8)]);
        let mut d = FlatDecoder::try_new(&s).expect("flat schema");
        assert!(
            d.decode([&br#"{"a":1,"b":"x"}"#[..], br#"{"a":2,"b":3}"#].into_iter())
                .is_none()
        );
        let batch = d
            .decode([&br#"{"b":"y","a":7}"#[..]].into_iter())
            .expect("decodes");
        assert_eq!(Some(batch), arrow(&s, &[r#"{"b":"y","a":7}"#]));
    }

    #[test]
    fn negative_zero_is_found_only_as_a_whole_number() {
        assert!(has_negative_zero_integer(br#"{"a":-0}"#));
        assert!(has_negative_zero_integer(br#"{"a":-0 }"#));
        assert!(!has_negative_zero_integer(
            br#"{"a":-0.5,"b":-0e1,"c":-05}"#
        ));
    }

    /// Random records over the shapes above, each compared with Arrow's decoder: where this
    /// path takes a chunk, the batch must be the one Arrow makes.
    #[test]
    fn random_chunks_agree_with_arrow_wherever_they_are_taken() {
        let s = all_types();
        let values: &[&str] = &[
            "null",
            "true",
            "false",
            "0",
            "-0",
            "-1",
            "127",
            "-129",
            "65536",
            "1e3",
            "2.5",
            "-0.0",
            "18446744073709551616",
            "\"\"",
            "\"x\\ty\"",
            "\"2024-01-02T03:04:05Z\"",
            "\"2024-01-02\"",
            "\"12\"",
            "[1,\"a\"]",
            "{\"k\":{}}",
            "1704067200000",
            "3.4e38",
        ];
        let keys = [
            "b", "i8", "i64", "u16", "u64", "f32", "f64", "s", "t", "other",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut taken, mut declined) = (0, 0);
        for _ in 0..3000 {
            let lines: Vec<String> = (0..1 + next(3))
                .map(|_| {
                    let fields: Vec<String> = (0..next(5))
                        .map(|_| {
                            format!(
                                "\"{}\":{}",
                                keys[next(keys.len())],
                                values[next(values.len())]
                            )
                        })
                        .collect();
                    format!("{{{}}}", fields.join(","))
                })
                .collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            match flat(&s, &lines) {
                Some(batch) => {
                    taken += 1;
                    assert_eq!(Some(batch), arrow(&s, &lines), "{lines:?}");
                }
                None => declined += 1,
            }
        }
        assert!(
            taken > 300 && declined > 300,
            "taken {taken}, declined {declined}"
        );
    }
}
