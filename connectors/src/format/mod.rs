//! Record formats shared by the connectors: decoders that turn raw bytes (a chunk of a file,
//! a Kafka message, an MQTT payload) into Arrow batches of a declared schema.
//!
//! A decoder never fails on a bad record: it hands the record to [`BadRecords`], which skips
//! and counts it or, with `on_error = 'fail'`, turns it into the error that stops the pipeline.

pub mod avro;
pub mod csv;
pub mod json;
pub mod message;
pub mod registry;

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};

use crate::bad_records::BadRecords;
use crate::error::Result;

pub use self::csv::CsvDecoder;
pub use self::json::JsonDecoder;

/// Turns chunks of raw records into batches of one schema.
pub trait RecordDecoder: Send + Debug {
    /// The schema of every batch [`RecordDecoder::decode`] returns.
    fn schema(&self) -> SchemaRef;

    /// Decodes `data`, a whole number of records whose first line is line `first_line`
    /// (1-based) of `source`. Bad records are reported to `bad` as `"<source>:<line>"` and
    /// left out of the batch.
    ///
    /// # Errors
    /// The first bad record when `on_error = 'fail'`, or an I/O error of the dead-letter file.
    fn decode(
        &mut self,
        data: &[u8],
        source: &str,
        first_line: u64,
        bad: &BadRecords,
    ) -> Result<RecordBatch>;
}

/// The location of a record in a text input: `"<source>:<line>"`.
pub fn line_location(source: &str, line: u64) -> String {
    format!("{source}:{line}")
}

/// `schema` with every field nullable: a decoded column holds NULL for a missing value.
pub fn nullable_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            Field::new(f.name(), f.data_type().clone(), true).with_metadata(f.metadata().clone())
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A batch of `rows` rows, which also works for a schema without columns.
pub(crate) fn batch_with_rows(
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
    rows: usize,
) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema, columns, &options,
    )?)
}

/// Splits a byte stream into chunks of whole records, counting lines as it goes.
///
/// With a quote character (CSV), a newline inside a quoted field does not end a record:
/// quotes are counted, and an escaped quote (`""`) leaves the count's parity unchanged.
#[derive(Debug, Clone)]
pub struct LineSplitter {
    quote: Option<u8>,
    /// How far the buffer has been scanned.
    pos: usize,
    /// Records ended so far in the scanned part.
    records: usize,
    /// Newlines seen up to `boundary`.
    newlines_at_boundary: u64,
    /// Newlines seen up to `pos`.
    newlines: u64,
    /// The end of the last complete record (just past its newline).
    boundary: usize,
    in_quotes: bool,
}

impl LineSplitter {
    /// A splitter for plain lines (`quote = None`) or CSV records (`Some(b'"')`).
    pub fn new(quote: Option<u8>) -> Self {
        Self {
            quote,
            pos: 0,
            records: 0,
            newlines_at_boundary: 0,
            newlines: 0,
            boundary: 0,
            in_quotes: false,
        }
    }

    /// Scans `buf` (which only grows between calls, until [`LineSplitter::cut`]) until
    /// `max_records` complete records are found or the buffer ends. Returns the byte offset
    /// just past the last complete record found so far, and how many records that covers.
    pub fn scan(&mut self, buf: &[u8], max_records: usize) -> (usize, usize) {
        while self.pos < buf.len() && self.records < max_records {
            let rest = &buf[self.pos..];
            let found = match self.quote {
                Some(q) => memchr::memchr2(q, b'\n', rest),
                None => memchr::memchr(b'\n', rest),
            };
            let Some(at) = found else {
                self.pos = buf.len();
                break;
            };
            let b = rest[at];
            self.pos += at + 1;
            if Some(b) == self.quote {
                self.in_quotes = !self.in_quotes;
            } else {
                self.newlines += 1;
                if !self.in_quotes {
                    self.records += 1;
                    self.boundary = self.pos;
                    self.newlines_at_boundary = self.newlines;
                }
            }
        }
        (self.boundary, self.records)
    }

    /// The number of newlines in `buf[..end]`, where `end` is the boundary returned by the
    /// last [`LineSplitter::scan`] or the whole scanned buffer.
    pub fn newlines_before(&self, end: usize) -> u64 {
        if end == self.boundary {
            self.newlines_at_boundary
        } else {
            self.newlines
        }
    }

    /// Forgets the scanned state after the caller removed a chunk from the buffer's front.
    pub fn cut(&mut self) {
        *self = Self::new(self.quote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_respects_quotes() {
        let data = b"a,\"x\ny\"\nb,c\nd";
        let mut s = LineSplitter::new(Some(b'"'));
        let (end, n) = s.scan(data, 1);
        assert_eq!((end, n), (8, 1));
        assert_eq!(s.newlines_before(end), 2);
        let mut s = LineSplitter::new(Some(b'"'));
        assert_eq!(s.scan(data, 10), (12, 2));
        let mut s = LineSplitter::new(None);
        assert_eq!(s.scan(b"{}\n{}\n{", 10), (6, 2));
    }
}
