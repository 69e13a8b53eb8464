//! Formats of message-based connectors (Kafka, MQTT, NATS), where every message is one
//! record: `json` (one object), `csv` (one line, no header) or `raw` (the payload as one
//! VARCHAR column). Decoding works on a [`MessageBuffer`] of many messages at once, so the
//! vectorised JSON and CSV decoders see whole batches; encoding turns a batch into one
//! payload per row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::bad_records::BadRecords;
use crate::error::{Error, Result};
use crate::format::{CsvDecoder, JsonDecoder, RecordDecoder};
use crate::options::Options;

/// The format of a message connector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// One JSON object per message.
    Json,
    /// One CSV line per message, without a header.
    Csv {
        /// The field delimiter.
        delimiter: u8,
    },
    /// The payload as text, in a single VARCHAR column.
    Raw,
}

impl MessageFormat {
    /// Takes `format` (default `json`) and, for CSV, `delimiter` from `options`.
    ///
    /// # Errors
    /// An unknown format, or a delimiter that is not one character or not for CSV.
    pub fn from_options(connector: &str, options: &mut Options) -> Result<Self> {
        let format = options
            .take_choice("format", &["json", "csv", "raw"])?
            .unwrap_or_else(|| "json".into());
        let delimiter = options.take_char("delimiter")?;
        match format.as_str() {
            "csv" => Ok(MessageFormat::Csv {
                delimiter: delimiter.unwrap_or(b','),
            }),
            other => {
                if delimiter.is_some() {
                    return Err(Error::option(
                        connector,
                        format!("option 'delimiter' applies to the csv format only, not {other}"),
                    ));
                }
                Ok(if other == "raw" {
                    MessageFormat::Raw
                } else {
                    MessageFormat::Json
                })
            }
        }
    }

    /// The schema of the records: the declared columns, or for `raw` without them a single
    /// `value` column.
    ///
    /// # Errors
    /// JSON and CSV without declared columns; `raw` with anything but one VARCHAR column.
    pub fn schema(&self, connector: &str, declared: Option<SchemaRef>) -> Result<SchemaRef> {
        let declared = declared.filter(|s| !s.fields().is_empty());
        match (self, declared) {
            (MessageFormat::Raw, None) => Ok(Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Utf8,
                true,
            )]))),
            (MessageFormat::Raw, Some(s)) => {
                if s.fields().len() == 1 && s.field(0).data_type() == &DataType::Utf8 {
                    Ok(s)
                } else {
                    Err(Error::option(
                        connector,
                        "format 'raw' gives one VARCHAR column; declare one or none",
                    ))
                }
            }
            (_, Some(s)) => Ok(s),
            (f, None) => Err(Error::option(
                connector,
                format!(
                    "format '{}' needs the source's columns declared",
                    if *f == MessageFormat::Json {
                        "json"
                    } else {
                        "csv"
                    }
                ),
            )),
        }
    }

    /// A decoder for records of `schema`.
    ///
    /// # Errors
    /// When a column type cannot be decoded from this format.
    pub fn decoder(&self, schema: &SchemaRef) -> Result<MessageDecoder> {
        Ok(match self {
            MessageFormat::Json => MessageDecoder::Text(Box::new(JsonDecoder::try_new(schema)?)),
            MessageFormat::Csv { delimiter } => {
                MessageDecoder::Text(Box::new(CsvDecoder::try_new(schema, false, *delimiter)?))
            }
            MessageFormat::Raw => MessageDecoder::Raw(Arc::clone(schema)),
        })
    }
}

/// Payloads of several messages, back to back, with where each ends.
#[derive(Debug, Default, Clone)]
pub struct MessageBuffer {
    data: Vec<u8>,
    ends: Vec<usize>,
}

impl MessageBuffer {
    /// Appends one message. For the text formats messages are separated by a newline; a
    /// payload's own trailing newline is dropped.
    pub fn push(&mut self, payload: &[u8]) {
        let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.data.push(b'\n');
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no message.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Empties it, keeping the allocation.
    pub fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
    }
}

/// Decodes a [`MessageBuffer`] into a batch.
#[derive(Debug)]
pub enum MessageDecoder {
    /// JSON or CSV, through the file decoders.
    Text(Box<dyn RecordDecoder>),
    /// The payload as a string.
    Raw(SchemaRef),
}

impl MessageDecoder {
    /// Decodes every message of `messages`; message `i` is reported as `"<source>:<first + i>"`
    /// when it is bad (for Kafka, `first` is the first message's offset).
    ///
    /// # Errors
    /// A bad record when `on_error = 'fail'`.
    pub fn decode(
        &mut self,
        messages: &MessageBuffer,
        source: &str,
        first: u64,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        match self {
            MessageDecoder::Text(d) => d.decode(&messages.data, source, first, bad),
            MessageDecoder::Raw(schema) => {
                let mut start = 0;
                let values: StringArray = messages
                    .ends
                    .iter()
                    .map(|&end| {
                        let s = String::from_utf8_lossy(&messages.data[start..end]).into_owned();
                        start = end + 1;
                        Some(s)
                    })
                    .collect();
                Ok(RecordBatch::try_new(
                    Arc::clone(schema),
                    vec![Arc::new(values) as ArrayRef],
                )?)
            }
        }
    }
}

/// Encodes a batch as one payload per row.
///
/// # Errors
/// When a column cannot be written in the format (raw needs a single column).
pub fn encode_rows(format: MessageFormat, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    match format {
        MessageFormat::Json => {
            let mut buf = Vec::new();
            {
                let mut writer = LineDelimitedWriter::new(&mut buf);
                writer.write(batch)?;
                writer.finish()?;
            }
            // JSON escapes newlines inside strings, so every line is one row.
            Ok(buf
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect())
        }
        MessageFormat::Csv { delimiter } => {
            let options = FormatOptions::default();
            let formatters = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let sep = char::from(delimiter);
            Ok((0..batch.num_rows())
                .map(|row| {
                    let mut line = String::new();
                    for (i, f) in formatters.iter().enumerate() {
                        if i > 0 {
                            line.push(sep);
                        }
                        if batch.column(i).is_valid(row) {
                            let cell = f.value(row).to_string();
                            if cell.contains([sep, '"', '\n', '\r']) {
                                line.push('"');
                                line.push_str(&cell.replace('"', "\"\""));
                                line.push('"');
                            } else {
                                line.push_str(&cell);
                            }
                        }
                    }
                    line.into_bytes()
                })
                .collect())
        }
        MessageFormat::Raw => {
            if batch.num_columns() != 1 {
                return Err(Error::Input(
                    "format 'raw' writes one column; the query has several".into(),
                ));
            }
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(batch.column(0).as_ref(), &options)?;
            Ok((0..batch.num_rows())
                .map(|row| f.value(row).to_string().into_bytes())
                .collect())
        }
    }
}

/// The key of each row: the `key` columns' values, one column as its text, several as a
/// JSON object.
///
/// # Errors
/// When encoding fails.
pub fn encode_keys(batch: &RecordBatch, key_columns: &[usize]) -> Result<Option<Vec<Vec<u8>>>> {
    match key_columns {
        [] => Ok(None),
        [one] => Ok(Some(encode_rows(
            MessageFormat::Raw,
            &batch.project(&[*one])?,
        )?)),
        many => Ok(Some(encode_rows(
            MessageFormat::Json,
            &batch.project(many)?,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::OnError;
    use crate::metrics::ConnectorMetrics;
    use datafusion::arrow::array::Int64Array;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn json_messages_round_trip() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec![Some("a\nb"), None])),
            ],
        )
        .unwrap();
        let rows = encode_rows(MessageFormat::Json, &batch).unwrap();
        assert_eq!(rows.len(), 2);
        let mut buf = MessageBuffer::default();
        for r in &rows {
            buf.push(r);
        }
        buf.push(b"not json");
        let bad = BadRecords::new(OnError::Skip, Arc::new(ConnectorMetrics::default()));
        let mut decoder = MessageFormat::Json.decoder(&schema()).unwrap();
        let back = decoder.decode(&buf, "t[0]", 10, &bad).unwrap();
        assert_eq!(back.num_rows(), 2);
        assert_eq!(back.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(back.column(1).as_ref(), batch.column(1).as_ref());
    }

    #[test]
    fn csv_and_raw_messages() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![7])),
                Arc::new(StringArray::from(vec![Some("x,\"y\"")])),
            ],
        )
        .unwrap();
        let csv = MessageFormat::Csv { delimiter: b',' };
        let rows = encode_rows(csv, &batch).unwrap();
        assert_eq!(rows, vec![b"7,\"x,\"\"y\"\"\"".to_vec()]);
        let mut buf = MessageBuffer::default();
        buf.push(&rows[0]);
        let bad = BadRecords::new(OnError::Skip, Arc::new(ConnectorMetrics::default()));
        let back = csv
            .decoder(&schema())
            .unwrap()
            .decode(&buf, "t", 0, &bad)
            .unwrap();
        assert_eq!(back.column(1).as_ref(), batch.column(1).as_ref());
        let raw_schema = MessageFormat::Raw.schema("kafka", None).unwrap();
        let mut raw = MessageFormat::Raw.decoder(&raw_schema).unwrap();
        let mut buf = MessageBuffer::default();
        buf.push(b"hello");
        buf.push(b"world\n");
        let got = raw.decode(&buf, "t", 0, &bad).unwrap();
        let values = got
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(values.value(0), "hello");
        assert_eq!(values.value(1), "world");
    }
}
