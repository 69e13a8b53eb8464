//! The CSV format: records parsed with the `csv` crate into one string column per declared
//! column, then cast to the declared types with Arrow's vectorised casts.
//!
//! An empty field is NULL. A record with the wrong number of fields, invalid UTF-8, or a
//! value that does not cast to its column's type is a bad record: reported with its
//! `"<source>:<line>"` location and left out of the batch.
//!
//! Messages (Kafka, MQTT, NATS) are decoded many at a time from one buffer
//! ([`CsvDecoder::decode_messages`]), each bad record named by its message, and a record
//! may not run past the end of its message: one message with an unclosed quote is one bad
//! record, not the swallower of every message after it.

use std::io::Cursor;
use std::ops::Range;
use std::sync::Arc;

use ::csv::{ErrorKind as CsvErrorKind, Position, ReaderBuilder, StringRecord};
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringArray, StringBuilder};
use datafusion::arrow::compute::{
    CastOptions, and, can_cast_types, cast_with_options, filter, is_not_null, is_null, not, or,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::bad_records::BadRecords;
use crate::error::{Error, Result};
use crate::format::{RecordDecoder, batch_with_rows, line_location, nullable_schema};

/// The UTF-8 byte order mark some tools put at the start of a file.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Decodes CSV records into batches of a declared schema.
///
/// With `has_header`, the first record the decoder sees is the header row. When it names
/// every declared column (case-insensitively), columns are matched by name; otherwise they
/// are read by position. Use one decoder per file.
#[derive(Debug)]
pub struct CsvDecoder {
    schema: SchemaRef,
    delimiter: u8,
    header_pending: bool,
    /// For each output column, the index of its field in a record.
    columns: Vec<usize>,
    /// How many fields a record must have.
    expected_fields: usize,
}

/// A record that made it into the string columns: where it came from (`line`: its line in
/// a file, or its message's index in a message buffer).
struct RowOrigin {
    line: u64,
    raw: Range<usize>,
}

/// A record rejected while decoding (`line` as in [`RowOrigin`]).
struct BadRow {
    line: u64,
    message: String,
    raw: Range<usize>,
}

/// How records sit in the bytes being decoded.
#[derive(Clone, Copy)]
enum Framing<'a> {
    /// Lines of a file, the first being line `first_line`.
    Lines { first_line: u64 },
    /// Messages separated by one `\n` each; message `i` ends (exclusive) at `ends[i]`.
    Messages { ends: &'a [usize] },
}

impl CsvDecoder {
    /// A decoder for `schema` (every column becomes nullable).
    ///
    /// # Errors
    /// When a column's type cannot be read from text; the message names the column.
    pub fn try_new(schema: &SchemaRef, has_header: bool, delimiter: u8) -> Result<Self> {
        for field in schema.fields() {
            let ty = field.data_type();
            if ty.is_nested() || !can_cast_types(&DataType::Utf8, ty) {
                return Err(Error::Input(format!(
                    "column '{}' has type {ty}, which the csv format cannot read",
                    field.name()
                )));
            }
        }
        let n = schema.fields().len();
        Ok(Self {
            schema: nullable_schema(schema),
            delimiter,
            header_pending: has_header,
            columns: (0..n).collect(),
            expected_fields: n,
        })
    }

    /// Matches the declared columns against a header row.
    fn use_header(&mut self, header: &StringRecord, source: &str) {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_ascii_lowercase())
            .collect();
        let by_name: Option<Vec<usize>> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                names
                    .iter()
                    .position(|n| *n == f.name().to_ascii_lowercase())
            })
            .collect();
        match by_name {
            Some(columns) => {
                self.columns = columns;
                self.expected_fields = names.len();
            }
            None => {
                tracing::warn!(
                    source,
                    "csv header does not name every declared column; reading columns by position"
                );
            }
        }
    }
}

/// Where a record spans `start..end` of `data`: skips the line ends before it (left over
/// from `\r\n` or blank lines), counts lines from `cursor`, and trims the trailing line end.
fn locate(data: &[u8], start: usize, end: usize, cursor: &mut (usize, u64)) -> (u64, Range<usize>) {
    let end = end.min(data.len());
    let mut start = start.min(end);
    while start < end && matches!(data[start], b'\r' | b'\n') {
        start += 1;
    }
    let from = cursor.0.min(start);
    let newlines = data[from..start].iter().filter(|b| **b == b'\n').count() as u64;
    *cursor = (start, cursor.1 + newlines);
    let mut stop = end;
    while stop > start && matches!(data[stop - 1], b'\r' | b'\n') {
        stop -= 1;
    }
    (cursor.1, start..stop)
}

/// Where the first line of a record ends, when the record runs over several lines without
/// closing its quotes: a quote opened and never closed swallows every line after it, so
/// only its first line is proven to belong to the record. `None` for a record on one line
/// and for a multi-line record whose quotes balance (a quoted field with line breaks).
fn unclosed_multiline(data: &[u8], raw: &Range<usize>) -> Option<usize> {
    let text = data.get(raw.clone())?;
    let first_newline = memchr::memchr(b'\n', text)?;
    (memchr::memchr_iter(b'"', text).count() % 2 == 1).then_some(raw.start + first_newline)
}

impl RecordDecoder for CsvDecoder {
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
        let data = if first_line == 1 {
            data.strip_prefix(BOM).unwrap_or(data)
        } else {
            data
        };
        self.decode_framed(data, source, Framing::Lines { first_line }, bad, &|line| {
            line_location(source, line)
        })
    }
}

impl CsvDecoder {
    /// Decodes messages of one record each, held in `data` one after another with a `\n`
    /// after each; message `i` ends (exclusive) at `ends[i]`. A bad record is reported at
    /// `locate(i)` of its message. A record that would run past the end of its message (an
    /// unclosed quote) is a bad record, and decoding goes on with the next message.
    ///
    /// # Errors
    /// The first bad record when `on_error = 'fail'`, or an I/O error of the dead-letter file.
    pub fn decode_messages(
        &mut self,
        data: &[u8],
        ends: &[usize],
        source: &str,
        locate: impl Fn(usize) -> String,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        self.decode_framed(data, source, Framing::Messages { ends }, bad, &|i| {
            locate(usize::try_from(i).unwrap_or(usize::MAX))
        })
    }

    fn decode_framed(
        &mut self,
        data: &[u8],
        source: &str,
        framing: Framing<'_>,
        bad: &BadRecords,
        render: &dyn Fn(u64) -> String,
    ) -> Result<RecordBatch> {
        let first_line = match framing {
            Framing::Lines { first_line } => first_line,
            Framing::Messages { .. } => 0,
        };
        let mut reader = ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .delimiter(self.delimiter)
            .from_reader(Cursor::new(data));
        let mut builders: Vec<StringBuilder> =
            self.columns.iter().map(|_| StringBuilder::new()).collect();
        let mut rows: Vec<RowOrigin> = Vec::new();
        let mut bad_rows: Vec<BadRow> = Vec::new();
        let mut record = StringRecord::new();
        let mut cursor = (0usize, first_line);
        // Messages: the one the next record starts in.
        let mut message = 0usize;
        loop {
            let start = reader.position().byte() as usize;
            let result = reader.read_record(&mut record);
            let end = reader.position().byte() as usize;
            if matches!(result, Ok(false)) {
                break;
            }
            // Located once: its line in a file, or its message's index in a buffer.
            let (mut line, raw) = locate(data, start, end, &mut cursor);
            if let Framing::Messages { ends } = framing {
                while ends.get(message).is_some_and(|e| *e < raw.start) {
                    message += 1;
                }
                let Some(&stop) = ends.get(message) else {
                    break;
                };
                if raw.end > stop {
                    let from = message.checked_sub(1).map_or(0, |m| ends[m] + 1);
                    bad_rows.push(BadRow {
                        line: message as u64,
                        message: "the record runs past the end of its message (an unclosed quote?)"
                            .to_string(),
                        raw: from..stop,
                    });
                    // Go on with the next message; its line numbers no longer matter.
                    let mut next = Position::new();
                    next.set_byte((stop + 1) as u64);
                    reader
                        .seek(next)
                        .map_err(|e| Error::Internal(format!("csv reader seek: {e}")))?;
                    message += 1;
                    continue;
                }
                line = message as u64;
            } else if let Some(cut) = unclosed_multiline(data, &raw) {
                // A record over several lines that does not close its quotes: only its
                // first line is proven to belong to it. That line is the bad record;
                // reading goes on at the next line.
                bad_rows.push(BadRow {
                    line,
                    message: "unclosed quote: the record's quoted field does not end on its line"
                        .to_string(),
                    raw: raw.start..cut,
                });
                let mut next = Position::new();
                next.set_byte((cut + 1) as u64);
                reader
                    .seek(next)
                    .map_err(|e| Error::Internal(format!("csv reader seek: {e}")))?;
                continue;
            }
            match result {
                Ok(_) => {
                    if self.header_pending {
                        self.header_pending = false;
                        self.use_header(&record, source);
                        continue;
                    }
                    if record.len() != self.expected_fields {
                        let message = format!(
                            "expected {} fields, found {}",
                            self.expected_fields,
                            record.len()
                        );
                        bad_rows.push(BadRow { line, message, raw });
                        continue;
                    }
                    for (builder, idx) in builders.iter_mut().zip(&self.columns) {
                        match record.get(*idx) {
                            Some(value) if !value.is_empty() => builder.append_value(value),
                            _ => builder.append_null(),
                        }
                    }
                    rows.push(RowOrigin { line, raw });
                }
                Err(e) => match e.kind() {
                    CsvErrorKind::Utf8 { err, .. } => {
                        if self.header_pending {
                            self.header_pending = false;
                            continue;
                        }
                        let message = format!("field {} is not valid UTF-8", err.field() + 1);
                        bad_rows.push(BadRow { line, message, raw });
                    }
                    _ => return Err(Error::Input(format!("{source}: {e}"))),
                },
            }
        }

        // Cast every column, and find the values that did not fit their column's type.
        let strings: Vec<ArrayRef> = builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        let mut columns = Vec::with_capacity(strings.len());
        let mut rejected: Option<BooleanArray> = None;
        let mut messages: Vec<Option<String>> = Vec::new();
        for (field, text) in self.schema.fields().iter().zip(&strings) {
            if field.data_type() == &DataType::Utf8 {
                columns.push(Arc::clone(text));
                continue;
            }
            let cast = cast_with_options(text, field.data_type(), &options)?;
            let failed = and(&is_not_null(text)?, &is_null(&cast)?)?;
            if failed.true_count() > 0 {
                if messages.is_empty() {
                    messages = vec![None; rows.len()];
                }
                let values = text.as_any().downcast_ref::<StringArray>();
                for i in failed.values().set_indices() {
                    if let Some(slot) = messages.get_mut(i).filter(|m| m.is_none()) {
                        let value = values.map(|v| v.value(i)).unwrap_or_default();
                        *slot = Some(format!(
                            "column '{}': cannot read '{value}' as {}",
                            field.name(),
                            field.data_type()
                        ));
                    }
                }
                rejected = Some(match rejected {
                    None => failed,
                    Some(prev) => or(&prev, &failed)?,
                });
            }
            columns.push(cast);
        }
        for (origin, message) in rows.iter().zip(messages) {
            if let Some(message) = message {
                bad_rows.push(BadRow {
                    line: origin.line,
                    message,
                    raw: origin.raw.clone(),
                });
            }
        }
        bad_rows.sort_by_key(|r| r.line);
        for row in &bad_rows {
            bad.report(
                &render(row.line),
                &row.message,
                data.get(row.raw.clone()).unwrap_or_default(),
            )?;
        }

        let mut num_rows = rows.len();
        if let Some(rejected) = rejected {
            let keep = not(&rejected)?;
            columns = columns
                .iter()
                .map(|c| filter(c.as_ref(), &keep))
                .collect::<Result<Vec<_>, _>>()?;
            num_rows = keep.true_count();
        }
        batch_with_rows(self.schema(), columns, num_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::OnError;
    use crate::metrics::ConnectorMetrics;
    use datafusion::arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::atomic::Ordering;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn skip() -> (Arc<ConnectorMetrics>, BadRecords) {
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        (metrics, bad)
    }

    #[test]
    fn decodes_good_rows_and_nulls() {
        let (_, bad) = skip();
        let mut d = CsvDecoder::try_new(&schema(), true, b',').unwrap();
        let data = b"id,name,ts\n1,a,2024-01-01 00:00:01\n2,,2024-01-01T00:00:02Z\n3,\"c,d\",\n";
        let batch = d.decode(data, "f.csv", 1, &bad).unwrap();
        assert_eq!(batch.num_rows(), 3);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 2, 3]);
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(names.is_null(1));
        assert_eq!(names.value(2), "c,d");
        let ts = batch
            .column(2)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_704_067_201_000);
        assert_eq!(ts.value(1), 1_704_067_202_000);
        assert!(ts.is_null(2));
    }

    #[test]
    fn an_unclosed_quote_loses_only_its_own_line() {
        let (metrics, bad) = skip();
        let mut d = CsvDecoder::try_new(&schema(), true, b',').unwrap();
        let mut data = String::from("id,name,ts\n1,a,\n2,\"never closed,\n");
        for i in 3..13 {
            data.push_str(&format!("{i},row {i},2024-01-01 00:00:0{}\n", i % 10));
        }
        let batch = d.decode(data.as_bytes(), "q.csv", 1, &bad).unwrap();
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
        // The fail policy names the line the quote opened on.
        let fail = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let mut d = CsvDecoder::try_new(&schema(), true, b',').unwrap();
        let err = d.decode(data.as_bytes(), "q.csv", 1, &fail).unwrap_err().to_string();
        assert!(err.contains("q.csv:3") && err.contains("unclosed quote"), "{err}");
    }

    #[test]
    fn a_quoted_field_over_several_lines_is_still_one_record() {
        let (metrics, bad) = skip();
        let mut d = CsvDecoder::try_new(&schema(), false, b',').unwrap();
        let data = b"1,\"two\nlines\",\n2,b,\n";
        let batch = d.decode(data, "m.csv", 1, &bad).unwrap();
        let names = batch
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(0), "two\nlines");
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn header_maps_columns_by_name() {
        let (_, bad) = skip();
        let mut d = CsvDecoder::try_new(&schema(), true, b';').unwrap();
        let batch = d
            .decode(b"ts;extra;name;id\n;x;n;7\n", "f.csv", 1, &bad)
            .unwrap();
        assert_eq!(batch.num_rows(), 1);
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.value(0), 7);
    }

    #[test]
    fn skips_and_counts_bad_rows() {
        let (metrics, bad) = skip();
        let mut d = CsvDecoder::try_new(&schema(), false, b',').unwrap();
        let data = b"1,a,\nx,b,\n3,c\n4,d,not a time\n5,e,\n";
        let batch = d.decode(data, "f.csv", 10, &bad).unwrap();
        assert_eq!(batch.num_rows(), 2);
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
        let mut d = CsvDecoder::try_new(&schema(), true, b',').unwrap();
        let err = d
            .decode(b"id,name,ts\n1,a,\n\nzz,b,\n", "data/f.csv", 1, &bad)
            .unwrap_err();
        assert!(
            matches!(&err, Error::BadRecord { location, .. } if location == "data/f.csv:4"),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("'id'") && text.contains("zz"), "{text}");
    }

    #[test]
    fn rejects_unreadable_types() {
        let schema = Arc::new(Schema::new(vec![Field::new_list(
            "l",
            Field::new("item", DataType::Int32, true),
            true,
        )]));
        assert!(
            CsvDecoder::try_new(&schema, true, b',')
                .unwrap_err()
                .to_string()
                .contains("'l'")
        );
    }
}
