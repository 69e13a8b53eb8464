//! The `avro` message format, on arrow-avro (the Arrow project's own Avro codec, which
//! decodes straight into Arrow columns): one Avro record per message, either plain (the
//! bare datum, with the writer schema given as `avro_schema` or derived from the declared
//! columns) or in the Confluent wire format (a zero byte, the schema id as 4 big-endian
//! bytes, then the datum) with the writer schemas looked up in a schema registry.
//!
//! Each writer schema gets its own decoder, and its columns are fitted to the declared ones
//! by name, with the safe casts of [`SchemaMap`]; a writer schema that lacks a declared
//! column makes its records bad records. Avro's `timestamp-*` types (UTC instants) are read
//! as Sluice's TIMESTAMP, and TIMESTAMP is written as `timestamp-*`.
//!
//! Messages are decoded together; only when that fails is each one checked alone, to
//! report the bad ones, as the text formats do.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_avro::reader::{Decoder, ReaderBuilder};
use arrow_avro::schema::{
    AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SCHEMA_METADATA_KEY,
    SchemaStore,
};
use arrow_avro::writer::format::{AvroBinaryFormat, AvroSoeFormat};
use arrow_avro::writer::{Encoder, WriterBuilder};
use datafusion::arrow::array::{ArrayRef, make_array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::bad_records::BadRecords;
use crate::error::{Error, Result};
use crate::format::nullable_schema;
use crate::format::registry::{Lookup, SchemaRegistry};
use crate::options::Options;
use crate::schema_map::SchemaMap;

/// The Confluent wire format's magic byte and the length of its header.
const MAGIC: u8 = 0;
const HEADER: usize = 5;

/// The schema id plain messages are decoded under.
const PLAIN_ID: u32 = 0;

/// How long a schema id the registry refused stays refused before it is asked again (a
/// registry replica may not have it yet).
const REFUSAL_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a writer schema cannot be read, and since when.
#[derive(Debug, Clone)]
struct Unreadable {
    reason: String,
    since: std::time::Instant,
}

/// The options of the `avro` format.
#[derive(Debug, Clone)]
pub struct AvroFormat {
    /// The writer schema given with `avro_schema`, as JSON.
    schema: Option<String>,
    /// The registry of the Confluent wire format; plain Avro without it.
    registry: Option<SchemaRegistry>,
    /// The subject a sink registers its schema under (default `<topic>-value`).
    subject: Option<String>,
}

impl AvroFormat {
    /// Takes `avro_schema`, `schema_registry` and `schema_subject` from `options`.
    ///
    /// # Errors
    /// An [`Error::Option`] when the schema is not valid Avro or the registry not a URL.
    pub fn from_options(connector: &str, options: &mut Options) -> Result<Self> {
        let schema = options.take_string("avro_schema");
        let registry = options
            .take_string("schema_registry")
            .map(|url| SchemaRegistry::try_new(connector, &url))
            .transpose()?;
        let subject = options.take_string("schema_subject");
        if let Some(json) = &schema {
            Reader::try_new(PLAIN_ID, AvroSchema::new(json.clone()), None, 1).map_err(|e| {
                Error::option(
                    connector,
                    format!("option 'avro_schema' is not usable: {e}"),
                )
            })?;
        }
        Ok(Self {
            schema,
            registry,
            subject,
        })
    }

    /// The names of the options this format takes, to reject them for other formats.
    pub const OPTIONS: [&'static str; 3] = ["avro_schema", "schema_registry", "schema_subject"];

    /// The source's schema: the declared columns, or those of `avro_schema`.
    ///
    /// # Errors
    /// When there is neither, or the declared columns cannot be read from `avro_schema`.
    pub fn schema(&self, connector: &str, declared: Option<SchemaRef>) -> Result<SchemaRef> {
        match (declared, &self.schema) {
            (Some(declared), _) => Ok(nullable_schema(&declared)),
            (None, Some(json)) => {
                let reader = Reader::try_new(PLAIN_ID, AvroSchema::new(json.clone()), None, 1)
                    .map_err(|e| Error::option(connector, e))?;
                Ok(nullable_schema(&reader.map.schema()))
            }
            (None, None) => Err(Error::option(
                connector,
                "format 'avro' needs the source's columns declared, or 'avro_schema'",
            )),
        }
    }

    /// A decoder of messages into batches of `schema`.
    ///
    /// # Errors
    /// For plain Avro, when the declared columns cannot be read from the writer schema.
    pub fn decoder(&self, connector: &str, schema: &SchemaRef) -> Result<AvroDecoder> {
        let mut readers = HashMap::new();
        if self.registry.is_none() {
            let writer = match &self.schema {
                Some(json) => AvroSchema::new(json.clone()),
                None => AvroSchema::try_from(writer_schema(schema).as_ref()).map_err(|e| {
                    Error::option(
                        connector,
                        format!("the declared columns have no Avro schema: {e}"),
                    )
                })?,
            };
            let reader = Reader::try_new(PLAIN_ID, writer, Some(schema), CAPACITY)
                .map_err(|e| Error::option(connector, e))?;
            readers.insert(PLAIN_ID, Ok(reader));
        }
        Ok(AvroDecoder {
            schema: Arc::clone(schema),
            registry: self.registry.clone(),
            readers,
            framed: Vec::new(),
            lookup: None,
        })
    }

    /// An encoder of batches of `schema`, one message per row. With a registry, the schema
    /// is registered under `schema_subject`, or `<topic>-value` as Confluent's serializers
    /// name it.
    ///
    /// # Errors
    /// When a column has no Avro type, or the registry refuses the schema.
    pub async fn encoder(&self, schema: &SchemaRef, topic: &str) -> Result<AvroEncoder> {
        let input = writer_schema(schema);
        let mut arrow = (*input).clone();
        let avro = match &self.schema {
            Some(json) => AvroSchema::new(json.clone()),
            None => AvroSchema::try_from(&arrow).map_err(|e| {
                Error::Input(format!("the sink's columns have no Avro schema: {e}"))
            })?,
        };
        arrow
            .metadata
            .insert(SCHEMA_METADATA_KEY.to_string(), avro.json_string.clone());
        let builder = WriterBuilder::new(arrow);
        let encoder = match &self.registry {
            Some(registry) => {
                let subject = self
                    .subject
                    .clone()
                    .unwrap_or_else(|| format!("{topic}-value"));
                let id = registry.register(&subject, &avro.json_string).await?;
                tracing::info!(
                    registry = registry.url(),
                    subject,
                    id,
                    "avro schema registered"
                );
                builder
                    .with_fingerprint_strategy(FingerprintStrategy::Id(id))
                    .build_encoder::<AvroSoeFormat>()
            }
            None => builder.build_encoder::<AvroBinaryFormat>(),
        }
        .map_err(|e| Error::Input(format!("cannot write the sink's columns as Avro: {e}")))?;
        Ok(AvroEncoder { encoder, input })
    }
}

/// Rows per decoder batch; a longer run of messages is decoded in several.
const CAPACITY: usize = 8192;

/// `schema` as Avro sees it: every column nullable (`["null", T]`), so that a source
/// deriving its writer schema from declared columns reads what a sink derived; a TIMESTAMP
/// column (no zone) is a UTC instant, which Avro calls `timestamp-*`.
fn writer_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let f = f.as_ref().clone().with_nullable(true);
            match f.data_type() {
                DataType::Timestamp(unit, None) => {
                    let utc = DataType::Timestamp(unit.to_owned(), Some("+00:00".into()));
                    f.with_data_type(utc)
                }
                _ => f,
            }
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// `array` with its type replaced by `to`, which has the same layout (a timestamp's zone).
fn retype(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    let data = array
        .to_data()
        .into_builder()
        .data_type(to.clone())
        .build()?;
    Ok(make_array(data))
}

/// Decodes the records of one writer schema and fits them to the declared columns.
#[derive(Debug)]
struct Reader {
    id: u32,
    schema: AvroSchema,
    capacity: usize,
    /// Decodes the messages of a batch together.
    decoder: Decoder,
    /// Checks messages one at a time when decoding them together failed.
    probe: Decoder,
    /// The decoded schema with UTC timestamps read as zone-less TIMESTAMPs.
    local: SchemaRef,
    map: SchemaMap,
}

impl Reader {
    /// A reader of records written with `schema` (registered under `id`), fitted to
    /// `declared`; `Err` says why it cannot be.
    fn try_new(
        id: u32,
        schema: AvroSchema,
        declared: Option<&SchemaRef>,
        capacity: usize,
    ) -> std::result::Result<Self, String> {
        let decoder = build(id, &schema, capacity)?;
        let probe = build(id, &schema, 1)?;
        let fields: Vec<Field> = decoder
            .schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Timestamp(unit, Some(tz)) if matches!(tz.as_ref(), "+00:00" | "UTC") => f
                    .as_ref()
                    .clone()
                    .with_data_type(DataType::Timestamp(unit.to_owned(), None)),
                _ => f.as_ref().clone(),
            })
            .collect();
        let local = Arc::new(Schema::new(fields));
        let map = SchemaMap::try_new("avro", &local, declared).map_err(|e| match id {
            PLAIN_ID => e.to_string(),
            _ => format!("writer schema id {id}: {e}"),
        })?;
        Ok(Self {
            id,
            schema,
            capacity,
            decoder,
            probe,
            local,
            map,
        })
    }

    /// Starts over after a failed decode, which may leave a decoder half way through a row.
    fn reset(&mut self) -> std::result::Result<(), String> {
        self.decoder = build(self.id, &self.schema, self.capacity)?;
        self.probe = build(self.id, &self.schema, 1)?;
        Ok(())
    }

    /// Decodes one framed message, which must hold exactly one record.
    fn feed(decoder: &mut Decoder, framed: &[u8]) -> std::result::Result<(), String> {
        let before = decoder.capacity();
        let consumed = decoder.decode(framed).map_err(|e| e.to_string())?;
        if decoder.capacity() + 1 != before {
            return Err("not one whole Avro record (truncated, or several)".into());
        }
        if consumed != framed.len() {
            return Err(format!(
                "{} byte(s) left over after the Avro record",
                framed.len() - consumed
            ));
        }
        Ok(())
    }

    /// The rows decoded so far, in the declared columns.
    fn flush(&mut self, declared: &SchemaRef) -> std::result::Result<Option<RecordBatch>, String> {
        match self.decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) => self.fit(batch, declared).map(Some),
            None => Ok(None),
        }
    }

    /// A decoded batch in the declared columns. Fails on a value the declared type cannot
    /// hold (a timestamp out of range after a unit change).
    fn fit(
        &self,
        batch: RecordBatch,
        declared: &SchemaRef,
    ) -> std::result::Result<RecordBatch, String> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.local.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    retype(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.to_string())?;
        let local =
            RecordBatch::try_new(Arc::clone(&self.local), columns).map_err(|e| e.to_string())?;
        let fitted = self.map.apply(&local).map_err(|e| e.to_string())?;
        RecordBatch::try_new(Arc::clone(declared), fitted.columns().to_vec())
            .map_err(|e| e.to_string())
    }
}

/// An arrow-avro decoder of the records of one writer schema, framed with its id.
fn build(id: u32, schema: &AvroSchema, capacity: usize) -> std::result::Result<Decoder, String> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store
        .set(Fingerprint::Id(id), schema.clone())
        .map_err(|e| e.to_string())?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_batch_size(capacity)
        .build_decoder()
        .map_err(|e| e.to_string())
}

/// Decodes Avro messages into batches of the declared columns.
#[derive(Debug)]
pub struct AvroDecoder {
    schema: SchemaRef,
    registry: Option<SchemaRegistry>,
    /// A reader per writer schema id, or why that schema cannot be read.
    readers: HashMap<u32, std::result::Result<Reader, Unreadable>>,
    /// A plain message with a header put in front, as the decoder reads it.
    framed: Vec<u8>,
    /// Registry lookups under way: a task, so that a cancelled [`AvroDecoder::prepare`]
    /// leaves them running and the next call picks them up.
    lookup: Option<PendingLookup>,
}

/// A registry lookup under way: the ids and what the registry said of each.
type PendingLookup = tokio::task::JoinHandle<Result<Vec<(u32, Lookup)>>>;

impl Drop for AvroDecoder {
    fn drop(&mut self) {
        if let Some(lookup) = &self.lookup {
            lookup.abort();
        }
    }
}

impl AvroDecoder {
    /// Looks up the writer schemas of `messages` not seen before in the registry (and
    /// those it refused more than 30 s ago). Cancel-safe: the lookups go on in a task that
    /// the next call awaits.
    ///
    /// # Errors
    /// When the registry cannot be reached.
    pub async fn prepare<'a>(
        &mut self,
        messages: impl Iterator<Item = &'a [u8]> + Clone,
    ) -> Result<()> {
        let Some(registry) = &self.registry else {
            return Ok(());
        };
        loop {
            if self.lookup.is_none() {
                let mut missing: Vec<u32> = messages
                    .clone()
                    .filter_map(|m| schema_id(m).ok())
                    .filter(|id| match self.readers.get(id) {
                        None => true,
                        Some(Ok(_)) => false,
                        Some(Err(u)) => u.since.elapsed() >= REFUSAL_TTL,
                    })
                    .collect();
                if missing.is_empty() {
                    return Ok(());
                }
                missing.sort_unstable();
                missing.dedup();
                let registry = registry.clone();
                self.lookup = Some(tokio::spawn(async move {
                    let mut found = Vec::with_capacity(missing.len());
                    for id in missing {
                        found.push((id, registry.schema_by_id(id).await?));
                    }
                    Ok(found)
                }));
            }
            let Some(lookup) = self.lookup.as_mut() else {
                return Ok(());
            };
            let found = lookup.await;
            self.lookup = None;
            let found = found.map_err(|e| {
                Error::Internal(format!("a schema registry lookup task failed: {e}"))
            })??;
            for (id, lookup) in found {
                let reader = match lookup {
                    Lookup::Found(json) => {
                        Reader::try_new(id, AvroSchema::new(json), Some(&self.schema), CAPACITY)
                    }
                    Lookup::Refused(reason) => Err(reason),
                }
                .map_err(|reason| {
                    tracing::warn!(id, reason, "an avro writer schema cannot be read");
                    Unreadable {
                        reason,
                        since: std::time::Instant::now(),
                    }
                });
                self.readers.insert(id, reader);
            }
        }
    }

    /// Decodes `messages` (message `i` is reported at `location(i)` when bad).
    ///
    /// # Errors
    /// A bad record when `on_error = 'fail'`.
    pub fn decode<'a>(
        &mut self,
        messages: impl Iterator<Item = &'a [u8]> + Clone,
        location: impl Fn(usize) -> String,
        bad: &BadRecords,
    ) -> Result<RecordBatch> {
        if let Ok(batch) = self.decode_all(messages.clone()) {
            return Ok(batch);
        }
        // Decoding them together failed: start over, check each alone, decode the good.
        self.reset()?;
        let mut good = Vec::new();
        for (i, message) in messages.enumerate() {
            match self.check(message) {
                Ok(()) => good.push(message),
                Err(reason) => bad.report(&location(i), &reason, message)?,
            }
        }
        let batch = self.decode_all(good.into_iter());
        if batch.is_err() {
            self.reset()?;
        }
        batch.map_err(|e| {
            Error::Internal(format!(
                "avro records that decoded alone failed together: {e}"
            ))
        })
    }

    /// Where `message` is decoded: its reader and the bytes it reads.
    fn route<'m>(
        readers: &'m mut HashMap<u32, std::result::Result<Reader, Unreadable>>,
        framed: &'m mut Vec<u8>,
        plain: bool,
        message: &'m [u8],
    ) -> std::result::Result<(&'m mut Reader, &'m [u8]), String> {
        let id = if plain { PLAIN_ID } else { schema_id(message)? };
        let reader = match readers.get_mut(&id) {
            Some(Ok(reader)) => reader,
            Some(Err(unreadable)) => return Err(unreadable.reason.clone()),
            None => return Err(format!("writer schema id {id} was not looked up")),
        };
        if plain {
            framed.clear();
            framed.push(MAGIC);
            framed.extend_from_slice(&PLAIN_ID.to_be_bytes());
            framed.extend_from_slice(message);
            Ok((reader, framed.as_slice()))
        } else {
            Ok((reader, message))
        }
    }

    /// Checks one message alone, all the way to the declared columns: its bytes, its
    /// strings' UTF-8 (checked when a batch is built) and the casts.
    fn check(&mut self, message: &[u8]) -> std::result::Result<(), String> {
        let plain = self.registry.is_none();
        let declared = Arc::clone(&self.schema);
        let (reader, bytes) = Self::route(&mut self.readers, &mut self.framed, plain, message)?;
        let outcome = Reader::feed(&mut reader.probe, bytes).and_then(|()| {
            match reader.probe.flush().map_err(|e| e.to_string())? {
                Some(batch) => reader.fit(batch, &declared).map(|_| ()),
                None => Err("no record decoded".into()),
            }
        });
        if outcome.is_err() {
            // A failed decode or flush may leave the probe half way through a row, or full.
            reader.probe = build(reader.id, &reader.schema, 1)?;
        }
        outcome
    }

    /// Starts every reader over.
    fn reset(&mut self) -> Result<()> {
        for reader in self.readers.values_mut().filter_map(|r| r.as_mut().ok()) {
            reader
                .reset()
                .map_err(|e| Error::Internal(format!("an avro decoder cannot restart: {e}")))?;
        }
        Ok(())
    }

    /// Decodes every message, in order; `Err` at the first that fails.
    fn decode_all<'a>(
        &mut self,
        messages: impl Iterator<Item = &'a [u8]>,
    ) -> std::result::Result<RecordBatch, String> {
        let plain = self.registry.is_none();
        let mut pieces = Vec::new();
        let mut current: Option<u32> = None;
        for message in messages {
            let (reader, bytes) = Self::route(&mut self.readers, &mut self.framed, plain, message)?;
            let id = reader.id;
            if reader.decoder.batch_is_full() {
                pieces.extend(reader.flush(&self.schema)?);
            }
            Reader::feed(&mut reader.decoder, bytes)?;
            if current.is_some_and(|c| c != id) {
                // A new writer schema: the rows of the previous one go first.
                if let Some(Ok(previous)) = current.and_then(|c| self.readers.get_mut(&c)) {
                    pieces.extend(previous.flush(&self.schema)?);
                }
            }
            current = Some(id);
        }
        if let Some(Ok(last)) = current.and_then(|c| self.readers.get_mut(&c)) {
            pieces.extend(last.flush(&self.schema)?);
        }
        match pieces.len() {
            0 => Ok(RecordBatch::new_empty(Arc::clone(&self.schema))),
            1 => Ok(pieces.remove(0)),
            _ => concat_batches(&self.schema, &pieces).map_err(|e| e.to_string()),
        }
    }
}

/// The schema id of a message in the Confluent wire format.
fn schema_id(message: &[u8]) -> std::result::Result<u32, String> {
    match message {
        [MAGIC, a, b, c, d, ..] if message.len() > HEADER => {
            Ok(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => Err(
            "not in the Confluent wire format (a zero byte, a 4-byte schema id, the record)".into(),
        ),
    }
}

/// Encodes batches as one Avro message per row.
#[derive(Debug)]
pub struct AvroEncoder {
    encoder: Encoder,
    /// The schema the encoder takes: the input's, with TIMESTAMPs in UTC.
    input: SchemaRef,
}

impl AvroEncoder {
    /// One payload per row of `batch`.
    ///
    /// # Errors
    /// When a value cannot be written with the schema.
    pub fn encode(&mut self, batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let columns = batch
            .columns()
            .iter()
            .zip(self.input.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(Arc::clone(c))
                } else {
                    retype(c, f.data_type())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.input), columns)?;
        self.encoder
            .encode(&batch)
            .map_err(|e| Error::Input(format!("cannot write a row as Avro: {e}")))?;
        Ok(self
            .encoder
            .flush()
            .iter()
            .map(|row| row.to_vec())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::OnError;
    use crate::format::line_location;
    use crate::metrics::ConnectorMetrics;

    /// Names message `i` `"<source>:<first + i>"`, as the message buffer does for counted
    /// messages.
    fn at(source: &'static str, first: u64) -> impl Fn(usize) -> String {
        move |i| line_location(source, first + i as u64)
    }
    use datafusion::arrow::array::{
        Array, AsArray, Int64Array, StringArray, TimestampNanosecondArray,
    };
    use datafusion::arrow::datatypes::{Int64Type, TimeUnit};
    use std::sync::atomic::Ordering;

    fn declared() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
        ]))
    }

    fn plain() -> AvroFormat {
        AvroFormat {
            schema: None,
            registry: None,
            subject: None,
        }
    }

    fn bad() -> BadRecords {
        BadRecords::new(OnError::Skip, Arc::new(ConnectorMetrics::default()))
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            declared(),
            vec![
                Arc::new(Int64Array::from(vec![1, -2, 300_000])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ünïcode")])),
                Arc::new(TimestampNanosecondArray::from(vec![
                    Some(1_704_067_200_123_000_000),
                    None,
                    Some(0),
                ])),
            ],
        )
        .unwrap()
    }

    /// Avro's zig-zag long, by hand.
    fn long(out: &mut Vec<u8>, v: i64) {
        let mut n = ((v << 1) ^ (v >> 63)) as u64;
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    #[tokio::test]
    async fn plain_avro_round_trips_through_the_declared_columns() {
        let format = plain();
        let mut encoder = format.encoder(&declared(), "t").await.unwrap();
        let rows = encoder.encode(&batch()).unwrap();
        assert_eq!(rows.len(), 3);
        let mut decoder = format.decoder("kafka", &declared()).unwrap();
        let got = decoder
            .decode(rows.iter().map(Vec::as_slice), at("t[0]", 0), &bad())
            .unwrap();
        assert_eq!(got, batch());
    }

    #[tokio::test]
    async fn bad_messages_are_reported_and_the_good_ones_kept() {
        let format = plain();
        let mut encoder = format.encoder(&declared(), "t").await.unwrap();
        let rows = encoder.encode(&batch()).unwrap();
        let mut trailing = rows[1].clone();
        trailing.push(0);
        let truncated = rows[2][..2].to_vec();
        let messages = [
            rows[0].clone(),
            truncated,
            trailing,
            rows[1].clone(),
            rows[2].clone(),
        ];
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let mut decoder = format.decoder("kafka", &declared()).unwrap();
        let got = decoder
            .decode(messages.iter().map(Vec::as_slice), at("t[0]", 10), &bad)
            .unwrap();
        assert_eq!(got, batch());
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 2);
        // The decoder is whole again for the next batch.
        let again = decoder
            .decode(rows.iter().map(Vec::as_slice), at("t[0]", 20), &bad)
            .unwrap();
        assert_eq!(again, batch());
        let fail = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
        let err = decoder
            .decode(messages.iter().map(Vec::as_slice), at("t[0]", 10), &fail)
            .unwrap_err();
        assert!(err.to_string().contains("t[0]:11"), "{err}");
    }

    fn plain_with(json: &str, declared: SchemaRef) -> AvroDecoder {
        let mut options = Options::new("kafka", [("avro_schema".to_string(), json.to_string())]);
        let format = AvroFormat::from_options("kafka", &mut options).unwrap();
        format.decoder("kafka", &declared).unwrap()
    }

    /// A record whose value passes the bytes but not the declared type (a timestamp out of
    /// the range of nanoseconds) is a bad record, found by the one-by-one check; it used to
    /// pass the check and fail the whole batch as an internal error.
    #[test]
    fn a_value_out_of_the_declared_range_is_a_bad_record() {
        let declared = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]));
        let mut decoder = plain_with(
            r#"{"type":"record","name":"R","fields":[
                {"name":"ts","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#,
            declared,
        );
        let messages: Vec<Vec<u8>> = [1_000, i64::MAX / 2, 2_000]
            .into_iter()
            .map(|v| {
                let mut m = Vec::new();
                long(&mut m, v);
                m
            })
            .collect();
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let got = decoder
            .decode(messages.iter().map(Vec::as_slice), at("t[0]", 0), &bad)
            .unwrap();
        let ts = got
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>();
        assert_eq!(ts.values().to_vec(), vec![1_000_000, 2_000_000]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
    }

    /// Strings are checked for UTF-8 only when a batch is built: one bad string is one bad
    /// record, and the messages after it still decode (the probe used to stay full).
    #[test]
    fn a_string_that_is_not_utf8_is_one_bad_record() {
        let declared = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, true)]));
        let mut decoder = plain_with(
            r#"{"type":"record","name":"R","fields":[{"name":"s","type":"string"}]}"#,
            declared,
        );
        let text = |bytes: &[u8]| {
            let mut m = Vec::new();
            long(&mut m, bytes.len() as i64);
            m.extend_from_slice(bytes);
            m
        };
        let messages = [
            text(b"ok"),
            text(&[0xff, 0xfe]),
            text(b"fine"),
            text(b"also"),
        ];
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let got = decoder
            .decode(messages.iter().map(Vec::as_slice), at("t[0]", 0), &bad)
            .unwrap();
        let s = got.column(0).as_string::<i32>();
        assert_eq!(
            s.iter().flatten().collect::<Vec<_>>(),
            ["ok", "fine", "also"]
        );
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn registry_messages_of_several_writer_schemas_keep_their_order() {
        let declared = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("price", DataType::Int64, true),
        ]));
        let v1 = r#"{"type":"record","name":"B","fields":[
            {"name":"auction","type":"long"},{"name":"price","type":"long"}]}"#;
        let v2 = r#"{"type":"record","name":"B","fields":[
            {"name":"price","type":"int"},{"name":"note","type":"string"},
            {"name":"auction","type":"long"}]}"#;
        let no_price =
            r#"{"type":"record","name":"B","fields":[{"name":"auction","type":"long"}]}"#;
        let mut decoder = AvroDecoder {
            schema: Arc::clone(&declared),
            registry: Some(SchemaRegistry::try_new("kafka", "http://127.0.0.1:9").unwrap()),
            readers: HashMap::new(),
            framed: Vec::new(),
            lookup: None,
        };
        for (id, json) in [(1, v1), (2, v2), (3, no_price)] {
            let reader = Reader::try_new(id, AvroSchema::new(json.into()), Some(&declared), 4)
                .map_err(|reason| Unreadable {
                    reason,
                    since: std::time::Instant::now(),
                });
            decoder.readers.insert(id, reader);
        }
        assert!(
            decoder.readers[&3]
                .as_ref()
                .unwrap_err()
                .reason
                .contains("column 'price' does not exist")
        );
        let message = |i: i64| {
            let id: u32 = if i % 3 == 0 { 2 } else { 1 };
            let mut out = vec![0];
            out.extend_from_slice(&id.to_be_bytes());
            if id == 1 {
                long(&mut out, i);
                long(&mut out, i * 10);
            } else {
                long(&mut out, i * 10);
                long(&mut out, 1);
                out.push(b'x');
                long(&mut out, i);
            }
            out
        };
        // More messages than a decoder's capacity of 4, with the schema changing often.
        let mut messages: Vec<Vec<u8>> = (0..11).map(message).collect();
        let mut orphan = message(1);
        orphan[1..5].copy_from_slice(&3u32.to_be_bytes());
        messages.insert(5, orphan);
        let metrics = Arc::new(ConnectorMetrics::default());
        let bad = BadRecords::new(OnError::Skip, Arc::clone(&metrics));
        let got = decoder
            .decode(messages.iter().map(Vec::as_slice), at("t[1]", 0), &bad)
            .unwrap();
        let auctions: Vec<i64> = got.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(auctions, (0..11).collect::<Vec<_>>());
        let prices = got.column(1).as_primitive::<Int64Type>();
        assert!((0..11).all(|i| prices.value(i) == i as i64 * 10 && prices.is_valid(i)));
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
        assert!(schema_id(b"\x01\0\0\0\x01x").is_err());
    }

    #[test]
    fn a_source_without_columns_takes_those_of_avro_schema() {
        let mut options = Options::new(
            "kafka",
            [(
                "avro_schema".to_string(),
                r#"{"type":"record","name":"R","fields":[{"name":"k","type":["null","string"]},
                   {"name":"at","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#
                    .to_string(),
            )],
        );
        let format = AvroFormat::from_options("kafka", &mut options).unwrap();
        let schema = format.schema("kafka", None).unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert_eq!(
            schema.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, None)
        );
        let mut options = Options::new(
            "kafka",
            [("avro_schema".to_string(), "{not json".to_string())],
        );
        let err = AvroFormat::from_options("kafka", &mut options).unwrap_err();
        assert!(err.to_string().contains("avro_schema"), "{err}");
    }
}
