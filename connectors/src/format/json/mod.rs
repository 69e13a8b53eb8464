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

    /// Casts timestamp columns from milliseconds to their declared units.
    fn finish(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let options = CastOptions {
            safe: true,
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
                    cast_with_options(col, field.data_type(), &options).map_err(Error::from)
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        batch_with_rows(Arc::clone(&self.schema), columns, batch.num_rows())
    }
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
        if let Some(batch) = self.flat.as_mut().and_then(|f| f.decode(records.clone())) {
            return self.finish(&batch);
        }
        if let Ok(batch) = self.decode_all(data, expected) {
            return self.finish(&batch);
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
            match self.decode_all(record, 1) {
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
        let batch = self.decode_all(&good, count).map_err(|e| {
            Error::Internal(format!(
                "json records that decoded alone failed together: {e}"
            ))
        })?;
        self.finish(&batch)
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
        // The fast path counts the lines as it goes; only Arrow's decoder needs the count.
        if let Some(flat) = self.flat.as_mut()
            && let Some(batch) = flat.decode(non_blank_lines(data).map(|(_, text)| text))
        {
            return self.finish(&batch);
        }
        let count = non_blank_lines(data).count();
        if count == 0 {
            return Ok(RecordBatch::new_empty(self.schema()));
        }
        // Then Arrow's decoder on the whole chunk, without splitting it into lines.
        if let Ok(batch) = self.decode_all(data, count) {
            return self.finish(&batch);
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
}
