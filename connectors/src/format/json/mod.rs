//! The JSON-lines format: one object per line, decoded with Arrow's JSON decoder.
//!
//! Fields not declared are ignored and declared fields that are missing are NULL. Timestamps
//! may be ISO-8601 strings or epoch-millisecond numbers: timestamp columns are decoded as
//! milliseconds and cast to the declared unit afterwards. A whole chunk is decoded at once,
//! first by the [`flat`] fast path, which takes only chunks it decodes exactly as Arrow's
//! decoder does, then by Arrow's decoder; only when that fails is it decoded line by line,
//! to find and report the bad lines.

mod flat;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder;
use datafusion::arrow::record_batch::RecordBatch;

use crate::bad_records::BadRecords;
use crate::error::{Error, Result};
use crate::format::{RecordDecoder, batch_with_rows, line_location, nullable_schema};

use self::flat::FlatDecoder;

/// Decodes JSON lines into batches of a declared schema.
#[derive(Debug)]
pub struct JsonDecoder {
    /// The declared schema, every column nullable.
    schema: SchemaRef,
    /// What the Arrow decoder reads: timestamps as milliseconds.
    reader_schema: SchemaRef,
    /// The fast path, when every column has a type it decodes.
    flat: Option<FlatDecoder>,
}

/// One non-empty line of a chunk.
struct Line<'a> {
    number: u64,
    text: &'a [u8],
}

impl JsonDecoder {
    /// A decoder for `schema` (every column becomes nullable).
    ///
    /// # Errors
    /// When a column's type cannot be read from JSON.
    pub fn try_new(schema: &SchemaRef) -> Result<Self> {
        let schema = nullable_schema(schema);
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(_, tz) => Field::new(
                    f.name(),
                    DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
                    true,
                ),
                other => Field::new(f.name(), other.clone(), true),
            })
            .collect();
        let reader_schema = Arc::new(Schema::new(fields));
        let decoder = Self {
            schema,
            flat: FlatDecoder::try_new(&reader_schema),
            reader_schema,
        };
        decoder
            .arrow_decoder(1)
            .map_err(|e| Error::Input(format!("the json format cannot read this schema: {e}")))?;
        Ok(decoder)
    }

    fn arrow_decoder(&self, batch_size: usize) -> Result<Decoder> {
        Ok(ReaderBuilder::new(Arc::clone(&self.reader_schema))
            .with_batch_size(batch_size.max(1))
            .with_coerce_primitive(true)
            .build_decoder()?)
    }

    /// Decodes `data` expecting exactly `expected` objects; `Err` carries the reason.
    fn decode_all(&self, data: &[u8], expected: usize) -> std::result::Result<RecordBatch, String> {
        let mut decoder = self.arrow_decoder(expected).map_err(|e| e.to_string())?;
        let consumed = decoder.decode(data).map_err(|e| e.to_string())?;
        if consumed < data.len() && data[consumed..].iter().any(|b| !b.is_ascii_whitespace()) {
            return Err("more than one JSON value on the line".to_string());
        }
        if decoder.has_partial_record() {
            return Err("incomplete JSON object".to_string());
        }
        if decoder.len() != expected {
            return Err(format!(
                "expected {expected} JSON value(s), found {}",
                decoder.len()
            ));
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) => Ok(batch),
            None => Ok(RecordBatch::new_empty(Arc::clone(&self.reader_schema))),
        }
    }

    /// Casts timestamp columns from milliseconds to their declared units. `Err` when a
    /// value is outside the declared unit's range (a nanosecond timestamp spans the years
    /// 1677 to 2262): such a record is bad, never a silent NULL.
    fn finish(&self, batch: &RecordBatch) -> std::result::Result<RecordBatch, String> {
        let options = CastOptions {
            safe: false,
            ..Default::default()
        };
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields().iter())
            .map(|(col, field)| {
                if col.data_type() == field.data_type() {
                    Ok(Arc::clone(col))
                } else {
                    cast_with_options(col, field.data_type(), &options).map_err(|e| {
                        format!(
                            "column '{}': a value is outside the range of {}: {e}",
                            field.name(),
                            field.data_type()
                        )
                    })
                }
            })
            .collect::<std::result::Result<Vec<ArrayRef>, String>>()?;
        batch_with_rows(Arc::clone(&self.schema), columns, batch.num_rows())
            .map_err(|e| e.to_string())
    }

    /// Decodes `data` holding exactly `expected` records and casts it to the declared
    /// schema; `Err` carries why it cannot be taken whole.
    fn decode_checked(
        &self,
        data: &[u8],
        expected: usize,
    ) -> std::result::Result<RecordBatch, String> {
        if let Some(depth) = too_deep(data) {
            return Err(depth);
        }
        self.finish(&self.decode_all(data, expected)?)
    }
}

/// The deepest nesting of objects and arrays a record may have. Deeper records are bad
/// records: decoders and the values they build recurse over the nesting.
pub const MAX_JSON_DEPTH: usize = 64;

/// Why `data` nests deeper than [`MAX_JSON_DEPTH`], if it does. One pass without recursion;
/// data with fewer brackets than the limit is passed at memchr's speed. Over several
/// records a malformed one can make the rest look deeper than they are: the caller then
/// checks each record alone.
fn too_deep(data: &[u8]) -> Option<String> {
    if memchr::memchr2_iter(b'{', b'[', data).take(MAX_JSON_DEPTH + 1).count() <= MAX_JSON_DEPTH {
        return None;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in data {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Some(format!(
                        "the record nests objects and arrays more than {MAX_JSON_DEPTH} levels deep"
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// The non-blank lines of `data` (without a trailing `\r`), each with its index from 0.
fn non_blank_lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut start = 0;
    memchr::memchr_iter(b'\n', data)
        .chain(std::iter::once(data.len()))
        .enumerate()
        .filter_map(move |(i, end)| {
            let text = data.get(start..end).unwrap_or_default();
            start = end + 1;
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            text.iter()
                .any(|b| !b.is_ascii_whitespace())
                .then_some((i, text))
        })
}

/// The non-blank lines of `data`, numbered from `first_line`.
fn lines(data: &[u8], first_line: u64) -> Vec<Line<'_>> {
    non_blank_lines(data)
        .map(|(i, text)| Line {
            number: first_line + i as u64,
            text,
        })
        .collect()
}

impl JsonDecoder {
    /// Decodes `data`, which holds the JSON values `records` back to back (each record one
    /// value, such as messages joined by newlines), decoding them all at once. Only when
    /// that fails is each record decoded alone: the bad ones are reported at
    /// `location(i)` and left out.
    ///
    /// # Errors
    /// A bad record when `on_error = 'fail'`.
    pub fn decode_records<'a>(
        &mut self,
        data: &[u8],
        records: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
        location: impl Fn(usize) -> String,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        let expected = records.len();
        if expected == 0 {
            return Ok(RecordBatch::new_empty(self.schema()));
        }
        if too_deep(data).is_none() {
            if let Some(Ok(batch)) = self
                .flat
                .as_mut()
                .and_then(|f| f.decode(records.clone()))
                .map(|b| self.finish(&b))
            {
                return Ok(batch);
            }
            if let Ok(batch) = self.decode_checked(data, expected) {
                return Ok(batch);
            }
        }
        self.decode_each(records, location, bad)
    }

    /// The slow path: validates each record alone, reports the bad ones, decodes the rest.
    fn decode_each<'a>(
        &self,
        records: impl Iterator<Item = &'a [u8]>,
        location: impl Fn(usize) -> String,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        let mut good: Vec<u8> = Vec::new();
        let mut count = 0usize;
        for (i, record) in records.enumerate() {
            match self.decode_checked(record, 1) {
                Ok(_) => {
                    good.extend_from_slice(record);
                    good.push(b'\n');
                    count += 1;
                }
                Err(message) => bad.report(&location(i), &message, record)?,
            }
        }
        if count == 0 {
            return Ok(RecordBatch::new_empty(self.schema()));
        }
        self.decode_checked(&good, count).map_err(|e| {
            Error::Internal(format!(
                "json records that decoded alone failed together: {e}"
            ))
        })
    }
}

impl RecordDecoder for JsonDecoder {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn decode(
        &mut self,
        data: &[u8],
        source: &str,
        first_line: u64,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        let shallow = too_deep(data).is_none();
        // The fast path counts the lines as it goes; only Arrow's decoder needs the count.
        if shallow
            && let Some(flat) = self.flat.as_mut()
            && let Some(batch) = flat.decode(non_blank_lines(data).map(|(_, text)| text))
            && let Ok(batch) = self.finish(&batch)
        {
            return Ok(batch);
        }
        let count = non_blank_lines(data).count();
        if count == 0 {
            return Ok(RecordBatch::new_empty(self.schema()));
        }
        // Then Arrow's decoder on the whole chunk, without splitting it into lines.
        if shallow && let Ok(batch) = self.decode_checked(data, count) {
            return Ok(batch);
        }
        let lines = lines(data, first_line);
        self.decode_each(
            lines.iter().map(|l| l.text),
            |i| line_location(source, lines.get(i).map_or(first_line, |l| l.number)),
            bad,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::OnError;
    use crate::metrics::ConnectorMetrics;
    use datafusion::arrow::array::{Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use std::sync::atomic::Ordering;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]))
    }

    #[test]
    fn decodes_lines_with_both_timestamp_spellings() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, metrics);
        let mut d = JsonDecoder::try_new(&schema()).unwrap();
        let data = b"{\"id\":1,\"name\":\"a\",\"ts\":\"2024-01-01T00:00:01Z\",\"extra\":true}\n\n{\"id\":2,\"ts\":1704067202000}\r\n";
        let batch = d.decode(data, "f.json", 1, &bad).unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch.schema().field(2).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let ts = batch
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.values(), &[1_704_067_201_000_000, 1_704_067_202_000_000]);
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(names.is_null(1));
    }

    #[test]
    fn skips_and_counts_bad_lines() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut d = JsonDecoder::try_new(&schema()).unwrap();
        let data = b"{\"id\":1}\n{\"id\":\"x\"}\n{\"id\":3\n[1]\n{\"id\":5}\n";
        let batch = d.decode(data, "f.json", 1, &bad).unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 5]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn fail_policy_names_file_and_line() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Fail, metrics);
        let mut d = JsonDecoder::try_new(&schema()).unwrap();
        let err = d
            .decode(
                b"{\"id\":1}\n{\"id\":1,\"ts\":\"nope\"}\n",
                "in/f.json",
                7,
                &bad,
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::BadRecord { location, .. } if location == "in/f.json:8"),
            "{err}"
        );
    }

    fn nanosecond_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]))
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .values()
            .to_vec()
    }

    #[test]
    fn a_deeply_nested_record_is_one_bad_record() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut d = JsonDecoder::try_new(&nanosecond_schema()).unwrap();
        let deep = format!(
            "{{\"id\":2,\"s\":{}1{}}}",
            "{\"a\":".repeat(100_000),
            "}".repeat(100_000)
        );
        let arrays = format!("{{\"id\":3,\"s\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let data = format!("{{\"id\":1}}\n{deep}\n{arrays}\n{{\"id\":4,\"s\":\"x\",\"other\":{{\"a\":[1]}}}}\n");
        let batch = d.decode(data.as_bytes(), "deep.json", 1, &bad).unwrap();
        assert_eq!(ids(&batch), vec![1, 4]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 2);
        // As messages too (Kafka, MQTT, NATS, webhook bodies).
        let records = [b"{\"id\":5}".as_slice(), deep.as_bytes()];
        let joined = [records[0], b"\n", records[1]].concat();
        let batch = d
            .decode_records(&joined, records.iter().copied(), |i| format!("m{i}"), &bad)
            .unwrap();
        assert_eq!(ids(&batch), vec![5]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_record_at_the_depth_limit_is_read() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Fail, metrics);
        let mut d = JsonDecoder::try_new(&nanosecond_schema()).unwrap();
        let n = MAX_JSON_DEPTH - 1;
        let data = format!("{{\"id\":1,\"other\":{}1{}}}\n", "[".repeat(n), "]".repeat(n));
        let batch = d.decode(data.as_bytes(), "f.json", 1, &bad).unwrap();
        assert_eq!(ids(&batch), vec![1]);
    }

    #[test]
    fn timestamps_outside_the_nanosecond_range_are_bad_records() {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut d = JsonDecoder::try_new(&nanosecond_schema()).unwrap();
        let data = b"{\"id\":1,\"ts\":\"2024-01-01T00:00:00Z\"}\n\
            {\"id\":2,\"ts\":\"9999-12-31T23:59:59Z\"}\n\
            {\"id\":3,\"ts\":\"1600-01-01T00:00:00Z\"}\n\
            {\"id\":4,\"ts\":\"2262-04-11T23:47:16Z\"}\n\
            {\"id\":5,\"ts\":\"1677-09-21T00:12:44Z\"}\n\
            {\"id\":6,\"ts\":\"2262-04-11T23:47:17Z\"}\n";
        let batch = d.decode(data, "f.json", 1, &bad).unwrap();
        assert_eq!(ids(&batch), vec![1, 4, 5]);
        assert_eq!(batch.column(2).null_count(), 0);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 3);
        let fail = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let err = d.decode(data, "f.json", 1, &fail).unwrap_err().to_string();
        assert!(err.contains("f.json:2") && err.contains("outside the range"), "{err}");
    }
}
