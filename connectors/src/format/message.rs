//! Formats of message-based connectors (Kafka, MQTT, NATS), where every message is one
//! record: `json` (one object), `csv` (one record, no header), `raw` (the payload as one
//! VARCHAR column, which must hold UTF-8 text, or one BYTEA column, byte for byte) or
//! `avro` (one datum, plain or in the Confluent wire format; see [`crate::format::avro`]). Decoding works on a [`MessageBuffer`] of many messages at
//! once, so the vectorised decoders see whole batches; a [`MessageEncoder`] turns a batch
//! into one payload per row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::bad_records::BadRecords;
use crate::error::{Error, Result};
use crate::format::avro::{AvroDecoder, AvroEncoder, AvroFormat};
use crate::format::{CsvDecoder, JsonDecoder};
use crate::options::Options;

/// The format of a message connector.
#[derive(Debug, Clone)]
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
    /// One Avro datum per message.
    Avro(AvroFormat),
}

impl MessageFormat {
    /// Takes `format` (default `json`) and, for CSV, `delimiter` from `options`; for Avro,
    /// `avro_schema`, `schema_registry` and `schema_subject`.
    ///
    /// # Errors
    /// An unknown format, or an option of another format.
    pub fn from_options(connector: &str, options: &mut Options) -> Result<Self> {
        let format = options
            .take_choice("format", &["json", "csv", "raw", "avro"])?
            .unwrap_or_else(|| "json".into());
        if format != "avro"
            && let Some(key) = AvroFormat::OPTIONS.iter().find(|k| options.contains(k))
        {
            return Err(Error::option(
                connector,
                format!("option '{key}' applies to the avro format only, not {format}"),
            ));
        }
        let delimiter = options.take_char("delimiter")?;
        match format.as_str() {
            "avro" if delimiter.is_some() => Err(Error::option(
                connector,
                "option 'delimiter' applies to the csv format only, not avro",
            )),
            "avro" => Ok(MessageFormat::Avro(AvroFormat::from_options(
                connector, options,
            )?)),
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
    /// JSON and CSV without declared columns; `raw` with anything but one VARCHAR or BYTEA
    /// column.
    pub fn schema(&self, connector: &str, declared: Option<SchemaRef>) -> Result<SchemaRef> {
        let declared = declared.filter(|s| !s.fields().is_empty());
        match (self, declared) {
            (MessageFormat::Avro(avro), declared) => avro.schema(connector, declared),
            (MessageFormat::Raw, None) => Ok(Arc::new(Schema::new(vec![Field::new(
                "value",
                DataType::Utf8,
                true,
            )]))),
            (MessageFormat::Raw, Some(s)) => {
                if s.fields().len() == 1
                    && matches!(s.field(0).data_type(), DataType::Utf8 | DataType::Binary)
                {
                    Ok(s)
                } else {
                    Err(Error::option(
                        connector,
                        "format 'raw' gives one VARCHAR or BYTEA column; declare one or none",
                    ))
                }
            }
            (_, Some(s)) => Ok(s),
            (f, None) => Err(Error::option(
                connector,
                format!(
                    "format '{}' needs the source's columns declared",
                    if matches!(f, MessageFormat::Json) {
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
            MessageFormat::Json => MessageDecoder::Json(Box::new(JsonDecoder::try_new(schema)?)),
            MessageFormat::Csv { delimiter } => {
                MessageDecoder::Csv(Box::new(CsvDecoder::try_new(schema, false, *delimiter)?))
            }
            MessageFormat::Raw => MessageDecoder::Raw(Arc::clone(schema)),
            MessageFormat::Avro(avro) => {
                MessageDecoder::Avro(Box::new(avro.decoder("avro", schema)?))
            }
        })
    }

    /// Whether payloads are binary: kept byte for byte, where a text payload loses its
    /// trailing newline.
    pub fn is_binary(&self) -> bool {
        matches!(self, MessageFormat::Avro(_))
    }
}

/// Payloads of several messages, back to back, with where each ends and where each came
/// from: a number that names it in bad-record reports (a Kafka offset, or a count).
#[derive(Debug, Default, Clone)]
pub struct MessageBuffer {
    data: Vec<u8>,
    ends: Vec<usize>,
    ids: Vec<u64>,
}

impl MessageBuffer {
    /// Appends one message, named `id`. For the text formats messages are separated by a
    /// newline; a payload's own trailing newline is dropped.
    pub fn push(&mut self, payload: &[u8], id: u64) {
        let payload = payload.strip_suffix(b"\n").unwrap_or(payload);
        self.push_binary(payload, id);
    }

    /// Appends one binary message, named `id`, as it is.
    pub fn push_binary(&mut self, payload: &[u8], id: u64) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.ids.push(id);
        self.data.push(b'\n');
    }

    /// Where message `i` came from: `"<source>:<id>"`.
    pub fn location(&self, source: &str, i: usize) -> String {
        match self.ids.get(i) {
            Some(id) => format!("{source}:{id}"),
            None => source.to_string(),
        }
    }

    /// The messages, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + Clone {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let message = &self.data[start..end];
            start = end + 1;
            message
        })
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
        self.ids.clear();
    }
}

/// Decodes a [`MessageBuffer`] into a batch.
#[derive(Debug)]
pub enum MessageDecoder {
    /// One JSON value per message (which may span lines).
    Json(Box<JsonDecoder>),
    /// One CSV record per message, through the file decoder.
    Csv(Box<CsvDecoder>),
    /// The payload as one column: VARCHAR (UTF-8 text) or BYTEA (the bytes).
    Raw(SchemaRef),
    /// Avro datums.
    Avro(Box<AvroDecoder>),
}

impl MessageDecoder {
    /// Gets ready to decode `messages`: for Avro with a schema registry, looks up the
    /// writer schemas not seen before. Cancel-safe.
    ///
    /// # Errors
    /// When the registry cannot be reached.
    pub async fn prepare(&mut self, messages: &MessageBuffer) -> Result<()> {
        match self {
            MessageDecoder::Avro(avro) => avro.prepare(messages.iter()).await,
            _ => Ok(()),
        }
    }

    /// Whether payloads go into a [`MessageBuffer`] byte for byte
    /// ([`MessageBuffer::push_binary`]).
    pub fn is_binary(&self) -> bool {
        match self {
            MessageDecoder::Avro(_) => true,
            MessageDecoder::Raw(schema) => schema.field(0).data_type() == &DataType::Binary,
            _ => false,
        }
    }

    /// Decodes every message of `messages`; a bad one is reported at
    /// [`MessageBuffer::location`] (`"<source>:<id>"`).
    ///
    /// # Errors
    /// A bad record when `on_error = 'fail'`.
    pub fn decode(
        &mut self,
        messages: &MessageBuffer,
        source: &str,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        let locate = |i| messages.location(source, i);
        match self {
            MessageDecoder::Json(d) => {
                d.decode_records(&messages.data, messages.iter(), locate, bad)
            }
            MessageDecoder::Csv(d) => {
                d.decode_messages(&messages.data, &messages.ends, source, locate, bad)
            }
            MessageDecoder::Avro(avro) => avro.decode(messages.iter(), locate, bad),
            MessageDecoder::Raw(schema) => {
                let values: ArrayRef = if schema.field(0).data_type() == &DataType::Binary {
                    Arc::new(messages.iter().map(Some).collect::<BinaryArray>())
                } else {
                    let mut text = StringBuilder::with_capacity(messages.len(), messages.bytes());
                    for (i, m) in messages.iter().enumerate() {
                        match std::str::from_utf8(m) {
                            Ok(s) => text.append_value(s),
                            // Text that is not UTF-8 does not fit a VARCHAR: a bad record,
                            // not a value silently changed.
                            Err(e) => bad.report(
                                &locate(i),
                                &format!("not UTF-8 text ({e}); declare the column BYTEA"),
                                m,
                            )?,
                        }
                    }
                    Arc::new(text.finish())
                };
                Ok(RecordBatch::try_new(Arc::clone(schema), vec![values])?)
            }
        }
    }
}

/// Messages of a message source waiting to become a batch: cut at `batch_size` messages or
/// `linger` after the first, decoded together. Shared by the sources that receive
/// messages one by one (MQTT, NATS, webhook); kept in the source, so that a `next_batch`
/// cancelled while waiting loses nothing.
#[derive(Debug)]
pub struct MessageBatcher {
    decoder: MessageDecoder,
    /// Where messages come from, for bad-record reports.
    name: String,
    pending: MessageBuffer,
    oldest: Option<std::time::Instant>,
    received: u64,
}

impl MessageBatcher {
    /// A batcher decoding with `decoder`, reporting bad records as `"<name>:<n>"`: `n`
    /// counts messages from 1, or is the id given to [`MessageBatcher::push_with_id`].
    pub fn new(decoder: MessageDecoder, name: String) -> Self {
        Self {
            decoder,
            name,
            pending: MessageBuffer::default(),
            oldest: None,
            received: 0,
        }
    }

    /// Adds one message, reported in bad-record logs by its count from 1.
    pub fn push(&mut self, payload: &[u8]) {
        self.received += 1;
        self.push_with_id(payload, self.received);
    }

    /// Adds one message that the service numbers itself (a JetStream stream sequence),
    /// reported in bad-record logs by that number.
    pub fn push_with_id(&mut self, payload: &[u8], id: u64) {
        if self.decoder.is_binary() {
            self.pending.push_binary(payload, id);
        } else {
            self.pending.push(payload, id);
        }
        self.oldest.get_or_insert_with(std::time::Instant::now);
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether the waiting messages should go out now: a full batch, or `linger` passed.
    pub fn due(&self, ctx: &crate::source::SourceContext) -> bool {
        self.pending.len() >= ctx.batch_size
            || self
                .oldest
                .is_some_and(|t| t.elapsed() >= ctx.linger && !self.pending.is_empty())
    }

    /// How long to wait for more messages before the waiting ones are due.
    pub fn wait(&self, ctx: &crate::source::SourceContext) -> std::time::Duration {
        self.oldest
            .map(|t| ctx.linger.saturating_sub(t.elapsed()))
            .unwrap_or(ctx.linger)
            .max(std::time::Duration::from_millis(1))
    }

    /// Adds a request body of several records, one per line (blank lines skipped).
    pub fn push_lines(&mut self, body: &[u8]) {
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.push(line);
            }
        }
    }

    /// The next batch of the messages arriving on `rx`, each one record (or, with
    /// `lines`, one record per line). Cancel-safe: received messages wait in the batcher.
    ///
    /// # Errors
    /// `closed()` when `rx` ends, or a bad record when `on_error = 'fail'`.
    pub async fn next_from(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
        ctx: &crate::source::SourceContext,
        lines: bool,
        closed: impl Fn() -> Error + Send,
    ) -> Result<Option<RecordBatch>> {
        loop {
            if self.due(ctx) {
                self.decoder.prepare(&self.pending).await?;
                let batch = self.emit(ctx)?;
                if batch.num_rows() > 0 {
                    return Ok(Some(batch));
                }
                continue;
            }
            while self.len() < ctx.batch_size {
                match rx.try_recv() {
                    Ok(p) if lines => self.push_lines(&p),
                    Ok(p) => self.push(&p),
                    Err(_) => break,
                }
            }
            if self.len() >= ctx.batch_size {
                continue;
            }
            match tokio::time::timeout(self.wait(ctx), rx.recv()).await {
                Ok(Some(p)) if lines => self.push_lines(&p),
                Ok(Some(p)) => self.push(&p),
                Ok(None) => return Err(closed()),
                Err(_) => {}
            }
        }
    }

    /// Looks up what decoding the waiting messages needs (see [`MessageDecoder::prepare`]).
    ///
    /// # Errors
    /// When the schema registry cannot be reached.
    pub async fn prepare(&mut self) -> Result<()> {
        self.decoder.prepare(&self.pending).await
    }

    /// Decodes the waiting messages into a batch (bad records go to the context's
    /// handler) and counts them in the context's metrics. With a schema registry, call
    /// [`MessageDecoder::prepare`] through [`MessageBatcher::prepare`] first.
    ///
    /// # Errors
    /// A bad record when `on_error = 'fail'`.
    pub fn emit(&mut self, ctx: &crate::source::SourceContext) -> Result<RecordBatch> {
        let messages = std::mem::take(&mut self.pending);
        self.oldest = None;
        let batch = self
            .decoder
            .decode(&messages, &self.name, &ctx.bad_records)?;
        let m = &ctx.metrics;
        m.records.fetch_add(
            batch.num_rows() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        m.bytes.fetch_add(
            messages.bytes() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(batch)
    }
}

/// Encodes batches as one payload per row, in a sink's format.
#[derive(Debug)]
pub enum MessageEncoder {
    /// JSON, CSV or raw text.
    Text(MessageFormat),
    /// Avro, with its schema fixed (and registered) when the sink opened.
    Avro(Box<AvroEncoder>),
}

impl MessageEncoder {
    /// An encoder of batches of `schema` in `format`. For Avro with a schema registry, the
    /// schema is registered under `schema_subject`, or `<topic>-value`.
    ///
    /// # Errors
    /// When the columns cannot be written in the format, or the registry refuses them.
    pub async fn try_new(format: &MessageFormat, schema: &SchemaRef, topic: &str) -> Result<Self> {
        match format {
            MessageFormat::Avro(avro) => Ok(MessageEncoder::Avro(Box::new(
                avro.encoder(schema, topic).await?,
            ))),
            MessageFormat::Raw if schema.fields().len() != 1 => Err(Error::Input(
                "format 'raw' writes one column; the query has several".into(),
            )),
            text => Ok(MessageEncoder::Text(text.clone())),
        }
    }

    /// One payload per row of `batch`.
    ///
    /// # Errors
    /// When a value cannot be written in the format.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match self {
            MessageEncoder::Text(format) => encode_rows(format, batch),
            MessageEncoder::Avro(avro) => avro.encode(batch),
        }
    }
}

/// Encodes a batch as one payload per row in a text format.
///
/// # Errors
/// When a column cannot be written in the format (raw needs a single column).
fn encode_rows(format: &MessageFormat, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
    match format {
        MessageFormat::Avro(_) => Err(Error::Internal(
            "avro rows are encoded by a MessageEncoder".into(),
        )),
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
            let delimiter = *delimiter;
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
            let column = batch.column(0);
            // Bytes go out as they are; a NULL is an empty payload.
            let bytes = |v: Option<&[u8]>| v.unwrap_or_default().to_vec();
            if let Some(b) = column.as_binary_opt::<i32>() {
                return Ok(b.iter().map(bytes).collect());
            }
            if let Some(b) = column.as_binary_opt::<i64>() {
                return Ok(b.iter().map(bytes).collect());
            }
            if let Some(b) = column.as_binary_view_opt() {
                return Ok(b.iter().map(bytes).collect());
            }
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(column.as_ref(), &options)?;
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
            &MessageFormat::Raw,
            &batch.project(&[*one])?,
        )?)),
        many => Ok(Some(encode_rows(
            &MessageFormat::Json,
            &batch.project(many)?,
        )?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::OnError;
    use crate::metrics::ConnectorMetrics;
    use datafusion::arrow::array::{Int64Array, StringArray};

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
        let rows = encode_rows(&MessageFormat::Json, &batch).unwrap();
        assert_eq!(rows.len(), 2);
        let mut buf = MessageBuffer::default();
        for (i, r) in rows.iter().enumerate() {
            buf.push(r, 10 + i as u64);
        }
        buf.push(b"not json", 12);
        let bad = BadRecords::new(OnError::Skip, Arc::new(ConnectorMetrics::default()));
        let mut decoder = MessageFormat::Json.decoder(&schema()).unwrap();
        let back = decoder.decode(&buf, "t[0]", &bad).unwrap();
        assert_eq!(back.num_rows(), 2);
        assert_eq!(back.column(0).as_ref(), batch.column(0).as_ref());
        assert_eq!(back.column(1).as_ref(), batch.column(1).as_ref());
    }

    /// Regression: JSON messages were split at newlines, so a pretty-printed message
    /// counted as several bad records, and Kafka bad records were named by the first
    /// offset plus their index, wrong where offsets have gaps.
    #[test]
    fn a_json_message_may_span_lines_and_a_bad_one_is_named_by_its_own_offset() {
        let mut buf = MessageBuffer::default();
        buf.push(b"{\n  \"id\": 1,\n  \"name\": \"a\"\n}", 100);
        buf.push(b"{\"id\": \"x\"}", 105);
        buf.push(b"", 106);
        buf.push(b"{\"id\": 3}\n", 110);
        let metrics = Arc::new(ConnectorMetrics::default());
        let skip = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut decoder = MessageFormat::Json.decoder(&schema()).unwrap();
        let got = decoder.decode(&buf, "t[0]", &skip).unwrap();
        let ids = got.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 3]);
        assert_eq!(
            metrics
                .bad_records
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        let fail = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let err = decoder.decode(&buf, "t[0]", &fail).unwrap_err();
        assert!(
            matches!(&err, Error::BadRecord { location, .. } if location == "t[0]:105"),
            "{err}"
        );
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
        let rows = encode_rows(&csv, &batch).unwrap();
        assert_eq!(rows, vec![b"7,\"x,\"\"y\"\"\"".to_vec()]);
        let mut buf = MessageBuffer::default();
        buf.push(&rows[0], 0);
        let bad = BadRecords::new(OnError::Skip, Arc::new(ConnectorMetrics::default()));
        let back = csv
            .decoder(&schema())
            .unwrap()
            .decode(&buf, "t", &bad)
            .unwrap();
        assert_eq!(back.column(1).as_ref(), batch.column(1).as_ref());
        let raw_schema = MessageFormat::Raw.schema("kafka", None).unwrap();
        let mut raw = MessageFormat::Raw.decoder(&raw_schema).unwrap();
        let mut buf = MessageBuffer::default();
        buf.push(b"hello", 0);
        buf.push(b"world\n", 1);
        let got = raw.decode(&buf, "t", &bad).unwrap();
        let values = got
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(values.value(0), "hello");
        assert_eq!(values.value(1), "world");
    }

    /// Regression: a raw VARCHAR message that is not UTF-8 was changed silently (invalid
    /// bytes became U+FFFD); now it is a bad record, named by its message.
    #[test]
    fn raw_text_that_is_not_utf8_is_a_bad_record() {
        let raw_schema = MessageFormat::Raw.schema("kafka", None).unwrap();
        let mut raw = MessageFormat::Raw.decoder(&raw_schema).unwrap();
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut buf = MessageBuffer::default();
        buf.push(b"ok", 10);
        buf.push(b"\xff\xfe", 11);
        buf.push("caf\u{e9}".as_bytes(), 12);
        let got = raw.decode(&buf, "t", &bad).unwrap();
        let values = got.column(0).as_string::<i32>();
        assert_eq!(
            values.iter().collect::<Vec<_>>(),
            [Some("ok"), Some("caf\u{e9}")]
        );
        assert_eq!(
            metrics
                .bad_records
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        let failing = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let err = raw.decode(&buf, "t", &failing).unwrap_err().to_string();
        assert!(err.contains("t:11") && err.contains("UTF-8"), "{err}");
    }

    #[test]
    fn raw_bytea_messages_keep_every_byte_both_ways() {
        let declared = Arc::new(Schema::new(vec![Field::new(
            "body",
            DataType::Binary,
            true,
        )]));
        let schema = MessageFormat::Raw.schema("nats", Some(declared)).unwrap();
        let mut raw = MessageFormat::Raw.decoder(&schema).unwrap();
        assert!(raw.is_binary());
        let payloads: [&[u8]; 3] = [b"\xff\x00", b"line\n", b""];
        let mut buf = MessageBuffer::default();
        for (i, p) in payloads.iter().enumerate() {
            buf.push_binary(p, i as u64);
        }
        let bad = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let got = raw.decode(&buf, "t", &bad).unwrap();
        let values = got.column(0).as_binary::<i32>();
        assert_eq!(values.iter().flatten().collect::<Vec<_>>(), payloads);
        assert_eq!(
            encode_rows(&MessageFormat::Raw, &got).unwrap(),
            payloads.map(<[u8]>::to_vec)
        );

        let int = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let err = MessageFormat::Raw.schema("nats", Some(int)).unwrap_err();
        assert!(err.to_string().contains("VARCHAR or BYTEA"), "{err}");
    }

    /// Regression: CSV messages were decoded as one text, so a message with an unclosed
    /// quote swallowed every message after it, and bad records were named by the first
    /// message's id plus a line count, wrong where ids have gaps.
    #[test]
    fn a_csv_message_with_an_unclosed_quote_is_one_bad_record() {
        let csv = MessageFormat::Csv { delimiter: b',' };
        let mut d = csv.decoder(&schema()).unwrap();
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut buf = MessageBuffer::default();
        // Kafka offsets with gaps; message 105 holds a quoted newline, which is fine.
        for (id, m) in [
            (100, "1,a"),
            (103, "2,\"never closed"),
            (104, "3,c"),
            (105, "4,\"d\ne\""),
            (109, "x,f"),
            (110, "6,g"),
        ] {
            buf.push(m.as_bytes(), id);
        }
        let got = d.decode(&buf, "t", &bad).unwrap();
        let ids = got
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        assert_eq!(ids.values(), &[1, 3, 4, 6]);
        let names = got.column(1).as_string::<i32>();
        assert_eq!(names.value(2), "d\ne");
        assert_eq!(
            metrics
                .bad_records
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );

        let failing = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let err = d.decode(&buf, "t", &failing).unwrap_err().to_string();
        assert!(
            err.contains("t:103") && err.contains("end of its message"),
            "{err}"
        );
        let mut tail = MessageBuffer::default();
        tail.push(b"7,h", 200);
        tail.push(b"y,i", 201);
        let err = d.decode(&tail, "t", &failing).unwrap_err().to_string();
        assert!(err.contains("t:201"), "{err}");
    }
}
