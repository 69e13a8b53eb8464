//! The `nats` source and sink, on async-nats.
//!
//! With `stream`, the source reads a JetStream stream through a durable pull consumer and
//! acknowledges each message only once the checkpoint that covers it is complete (without
//! checkpoints it acknowledges as it reads). A checkpoint records the stream sequence of the
//! last message handed out; recovery makes the durable consumer anew from the sequence after
//! it, as a Kafka source seeks to its checkpointed offsets. So a crash neither replays what
//! a checkpoint covered nor waits out `ack_wait` for what it did not, and the replay comes in
//! stream order. Without `stream` it subscribes to core NATS, which keeps nothing to replay.
//! The sink publishes one message per row: with `stream` through JetStream, waiting at
//! every checkpoint for the server's acknowledgements (at-least-once); otherwise to core
//! NATS, flushed at every checkpoint.
//!
//! Options: `servers` (`nats://127.0.0.1:4222`), `subject`, `stream`, `durable` (the
//! consumer's name; default `sluice-<pipeline>-<source>`, one per reading of the source, as
//! two readers of one consumer would split its messages; recovery deletes and makes it
//! anew), `format` (json, csv, raw, avro).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::Acker, stream::RetentionPolicy};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::message::{MessageBatcher, MessageEncoder, MessageFormat};
use crate::metrics::ConnectorMetrics;
use crate::options::Options;
use crate::sink::{Precommit, Sink, SinkConfig, SinkContext};
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "nats";

/// What both directions share.
#[derive(Debug, Clone)]
struct Connection {
    servers: String,
    subject: String,
    stream: Option<String>,
    format: MessageFormat,
}

impl Connection {
    fn from_options(options: &mut Options) -> Result<Self> {
        let servers = options.require_string("servers")?;
        let subject = options.require_string("subject")?;
        let stream = options.take_string("stream");
        let format = MessageFormat::from_options(CONNECTOR, options)?;
        Ok(Self {
            servers,
            subject,
            stream,
            format,
        })
    }

    async fn connect(&self) -> Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(self.servers.as_str())
            .await
            .map_err(|e| Error::service(CONNECTOR, format!("{}: {e}", self.servers)))
    }

    /// The JetStream stream, created over `subject` when it does not exist.
    async fn jetstream(
        &self,
        client: async_nats::Client,
        stream: &str,
    ) -> Result<(jetstream::Context, jetstream::stream::Stream)> {
        let js = jetstream::new(client);
        let st = js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream.to_string(),
                subjects: vec![self.subject.clone()],
                ..Default::default()
            })
            .await
            .map_err(|e| Error::service(CONNECTOR, format!("stream '{stream}': {e}")))?;
        Ok((js, st))
    }
}

/// A validated `nats` source.
#[derive(Debug, Clone)]
pub struct NatsSourceConfig {
    connection: Connection,
    durable: Option<String>,
    schema: SchemaRef,
}

impl NatsSourceConfig {
    /// Validates the options of a `nats` source with its declared columns.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        let durable = options.take_string("durable");
        if durable.is_some() && connection.stream.is_none() {
            return Err(Error::option(
                CONNECTOR,
                "option 'durable' needs 'stream' (a JetStream consumer)",
            ));
        }
        let schema = connection.format.schema(CONNECTOR, declared)?;
        connection.format.decoder(&schema)?;
        options.finish()?;
        Ok(Self {
            connection,
            durable,
            schema,
        })
    }
}

/// Where a source's messages come from.
enum Input {
    Core(async_nats::Subscriber),
    JetStream(Box<pull::Stream>),
}

#[async_trait::async_trait]
impl SourceConfig for NatsSourceConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        false
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        let saved = match &ctx.resume {
            Some(p) => Some(
                serde_json::from_value::<JetStreamPosition>(p.clone()).map_err(|e| {
                    Error::Internal(format!("a checkpointed nats position is unreadable: {e}"))
                })?,
            ),
            None => None,
        };
        let client = self.connection.connect().await?;
        let (input, after) = match &self.connection.stream {
            None => (
                Input::Core(
                    client
                        .subscribe(self.connection.subject.clone())
                        .await
                        .map_err(|e| Error::service(CONNECTOR, e))?,
                ),
                None,
            ),
            Some(stream) => {
                let (_, st) = self.connection.jetstream(client, stream).await?;
                let created = st.cached_info().created.to_string();
                // A position from a stream of the same name made since counts for nothing:
                // its sequences started over.
                let resume = saved.filter(|p| {
                    let same = p.stream_created == created;
                    if !same {
                        tracing::warn!(
                            stream,
                            "the checkpointed position is of an older stream of this name; reading from the consumer"
                        );
                    }
                    same
                });
                let durable = self
                    .durable
                    .clone()
                    .unwrap_or_else(|| format!("sluice-{}", ctx.reader));
                let (consumer, after) = durable_consumer(
                    &st,
                    &durable,
                    &self.connection.subject,
                    resume.map(|p| p.stream_sequence),
                )
                .await?;
                (
                    Input::JetStream(Box::new(
                        consumer
                            .messages()
                            .await
                            .map_err(|e| Error::service(CONNECTOR, e))?,
                    )),
                    Some((after, created)),
                )
            }
        };
        Ok(Box::new(NatsSource {
            input,
            batcher: MessageBatcher::new(
                self.connection.format.decoder(&self.schema)?,
                // Bad records: `nats:<stream>:<stream sequence>` with JetStream,
                // `nats:<subject>:<count>` without.
                match &self.connection.stream {
                    Some(stream) => format!("nats:{stream}"),
                    None => format!("nats:{}", self.connection.subject),
                },
            ),
            pending_acks: Vec::new(),
            handed_out: Vec::new(),
            by_checkpoint: BTreeMap::new(),
            to_ack: Vec::new(),
            accepted: after.as_ref().map_or(0, |(a, _)| *a),
            position: after.map(|(stream_sequence, stream_created)| JetStreamPosition {
                stream_sequence,
                stream_created,
            }),
            ctx,
        }))
    }
}

/// Where a JetStream source stands in a checkpoint: the stream sequence of the last message
/// it handed out, and when the stream was made (a stream deleted and made again under the
/// same name numbers its messages from 1 again).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JetStreamPosition {
    stream_sequence: u64,
    stream_created: String,
}

/// The consumer config every run uses, delivering from `deliver_policy`.
fn consumer_config(
    durable: &str,
    subject: &str,
    deliver_policy: jetstream::consumer::DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(durable.to_string()),
        // A stream may hold more subjects than the source reads.
        filter_subject: subject.to_string(),
        deliver_policy,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        // Messages wait for the checkpoint that covers them.
        ack_wait: Duration::from_secs(600),
        max_ack_pending: 1_000_000,
        ..Default::default()
    }
}

/// The durable consumer `durable` on `st`, delivering in stream order from the sequence
/// after the one it returns.
///
/// A recovering pipeline (`resume`: the checkpointed sequence) makes the consumer anew
/// from the sequence after it. A fresh one takes the consumer as it is, unless it holds
/// messages delivered but never acknowledged (a run that died without a checkpoint): then
/// it too is made anew, from its acknowledgement floor. Either way nothing comes twice and
/// nothing waits out `ack_wait` behind newer messages, which the server would otherwise do.
///
/// Deleting a consumer must not cost messages it still needs:
/// - on an `Interest` stream the server drops what no remaining consumer is interested in,
///   so a bridge consumer from the same sequence holds that interest meanwhile;
/// - on a `WorkQueue` stream nothing is dropped; the messages before the start, which no
///   acknowledgement will now remove, are purged as acknowledged, and the new consumer
///   delivers all that is left (the server allows no other start on a work queue).
async fn durable_consumer(
    st: &jetstream::stream::Stream,
    durable: &str,
    subject: &str,
    resume: Option<u64>,
) -> Result<(jetstream::consumer::PullConsumer, u64)> {
    let consumer_error =
        |e: &dyn std::fmt::Display| Error::service(CONNECTOR, format!("consumer '{durable}': {e}"));
    let existing = st.consumer_info(durable).await.ok();
    let last = match (resume, &existing) {
        (Some(last), _) => last,
        (None, Some(info)) if info.num_ack_pending > 0 => {
            tracing::info!(
                consumer = durable,
                unacknowledged = info.num_ack_pending,
                "jetstream consumer holds messages of a run that ended without a checkpoint; reading them again"
            );
            info.ack_floor.stream_sequence
        }
        (None, existing) => {
            // It goes on after the last message it delivered (all acknowledged).
            let after = existing.as_ref().map_or(0, |i| i.delivered.stream_sequence);
            let consumer = st
                .get_or_create_consumer(
                    durable,
                    consumer_config(durable, subject, Default::default()),
                )
                .await
                .map_err(|e| consumer_error(&e))?;
            return Ok((consumer, after));
        }
    };
    let from = jetstream::consumer::DeliverPolicy::ByStartSequence {
        start_sequence: last + 1,
    };
    let retention = st.cached_info().config.retention;
    // Named after its start, so that one left by a recovery that died half-way is told
    // apart, and only dropped once the new one holds the interest.
    let bridge_prefix = format!("{durable}-resume-");
    let bridge = format!("{bridge_prefix}{}", last + 1);
    if retention == RetentionPolicy::Interest {
        let mut config = consumer_config(&bridge, subject, from);
        config.inactive_threshold = Duration::from_secs(300);
        st.create_consumer(config)
            .await
            .map_err(|e| consumer_error(&e))?;
    }
    if existing.is_some() {
        st.delete_consumer(durable)
            .await
            .map_err(|e| consumer_error(&e))?;
    }
    let from = if retention == RetentionPolicy::WorkQueue {
        // A work-queue consumer must deliver all: what comes before the start goes first,
        // so that "all" starts right there.
        st.purge()
            .filter(subject)
            .sequence(last + 1)
            .await
            .map_err(|e| Error::service(CONNECTOR, format!("purging up to {last}: {e}")))?;
        jetstream::consumer::DeliverPolicy::All
    } else {
        from
    };
    let consumer = st
        .create_consumer(consumer_config(durable, subject, from))
        .await
        .map_err(|e| consumer_error(&e))?;
    if retention == RetentionPolicy::Interest {
        let mut names = st.consumer_names();
        let mut bridges = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| consumer_error(&e))?;
            if name.starts_with(&bridge_prefix) {
                bridges.push(name);
            }
        }
        for name in bridges {
            st.delete_consumer(&name)
                .await
                .map_err(|e| consumer_error(&e))?;
        }
    }
    tracing::info!(
        consumer = durable,
        from = last + 1,
        "jetstream consumer made anew"
    );
    Ok((consumer, last))
}

/// A running `nats` source.
struct NatsSource {
    input: Input,
    batcher: MessageBatcher,
    /// Acknowledgements of the messages waiting in the batcher.
    pending_acks: Vec<Acker>,
    /// Of messages handed out since the last barrier.
    handed_out: Vec<Acker>,
    /// Of messages before each barrier whose checkpoint is not complete yet.
    by_checkpoint: BTreeMap<u64, Vec<Acker>>,
    /// Of messages handed out without checkpoints, to acknowledge at the next call.
    to_ack: Vec<Acker>,
    /// The highest stream sequence taken into the batcher: a message at or below it is a
    /// redelivery (its `ack_wait` ran out) and is only acknowledged again.
    accepted: u64,
    /// JetStream only: the stream sequence of the last message handed out, the position.
    position: Option<JetStreamPosition>,
    ctx: SourceContext,
}

/// A message as the source takes it: payload, acknowledgement and stream sequence
/// (JetStream only).
type Received = (Bytes, Option<(Acker, u64)>);

impl NatsSource {
    /// The next message: `Some(Some(..))` one, `Some(None)` none now, `None` the input ended.
    async fn next_message(&mut self, wait: Option<Duration>) -> Result<Option<Option<Received>>> {
        let next = match &mut self.input {
            Input::Core(sub) => match wait {
                None => sub.next().now_or_never(),
                Some(w) => tokio::time::timeout(w, sub.next()).await.ok(),
            }
            .map(|m| m.map(|m| Ok::<_, Error>((m.payload, None)))),
            Input::JetStream(stream) => match wait {
                None => stream.next().now_or_never(),
                Some(w) => tokio::time::timeout(w, stream.next()).await.ok(),
            }
            .map(|m| {
                m.map(|m| {
                    let m = m.map_err(|e| Error::service(CONNECTOR, e))?;
                    let sequence = m
                        .info()
                        .map_err(|e| Error::service(CONNECTOR, format!("message metadata: {e}")))?
                        .stream_sequence;
                    let (msg, acker) = m.split();
                    Ok((msg.payload, Some((acker, sequence))))
                })
            }),
        };
        match next {
            None => Ok(Some(None)),
            Some(None) => Ok(None),
            Some(Some(Ok(m))) => Ok(Some(Some(m))),
            Some(Some(Err(e))) => {
                self.ctx.metrics.error();
                tracing::warn!(error = %e, "nats consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(Some(None))
            }
        }
    }

    fn accept(&mut self, payload: &[u8], ack: Option<(Acker, u64)>) {
        match ack {
            None => self.batcher.push(payload),
            Some((acker, sequence)) => {
                if sequence > self.accepted {
                    self.batcher.push_with_id(payload, sequence);
                    self.accepted = sequence;
                }
                self.pending_acks.push(acker);
            }
        }
    }

    /// Decodes the waiting messages. Nothing is awaited once they are taken, so a
    /// cancelled call loses no batch: without checkpoints, their acknowledgements go out
    /// at the start of the next call.
    async fn emit(&mut self) -> Result<RecordBatch> {
        // Before anything is taken: a cancelled registry lookup loses nothing.
        self.batcher.prepare().await?;
        let acks = std::mem::take(&mut self.pending_acks);
        let batch = self.batcher.emit(&self.ctx)?;
        if let Some(p) = &mut self.position {
            p.stream_sequence = self.accepted;
        }
        if self.ctx.checkpointing {
            self.handed_out.extend(acks);
        } else {
            self.to_ack.extend(acks);
        }
        Ok(batch)
    }
}

/// Acknowledges `acks`, removing each once it is sent: cancel-safe (an acknowledgement
/// sent twice is harmless).
async fn ack_all(acks: &mut Vec<Acker>) -> Result<()> {
    while let Some(a) = acks.last() {
        a.ack().await.map_err(|e| Error::service(CONNECTOR, e))?;
        acks.pop();
    }
    Ok(())
}

#[async_trait::async_trait]
impl Source for NatsSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        ack_all(&mut self.to_ack).await?;
        loop {
            if self.batcher.due(&self.ctx) {
                let batch = self.emit().await?;
                if batch.num_rows() > 0 {
                    return Ok(Some(batch));
                }
                continue;
            }
            let mut taken = 0;
            while self.batcher.len() < self.ctx.batch_size {
                match self.next_message(None).await? {
                    Some(Some((payload, acker))) => {
                        self.accept(&payload, acker);
                        taken += 1;
                    }
                    Some(None) => break,
                    None => return Err(Error::service(CONNECTOR, "the subscription ended")),
                }
            }
            if taken > 0 {
                continue;
            }
            match self
                .next_message(Some(self.batcher.wait(&self.ctx)))
                .await?
            {
                Some(Some((payload, acker))) => self.accept(&payload, acker),
                Some(None) => {}
                None => return Err(Error::service(CONNECTOR, "the subscription ended")),
            }
        }
    }

    fn position(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.position.as_ref()?).ok()
    }

    fn on_barrier(&mut self, checkpoint: u64) {
        let acks = std::mem::take(&mut self.handed_out);
        if !acks.is_empty() {
            self.by_checkpoint.insert(checkpoint, acks);
        }
    }

    async fn checkpoint_complete(&mut self, checkpoint: u64) -> Result<()> {
        // Each list leaves the map only once all of it is acknowledged (cancel-safe).
        while let Some(mut entry) = self.by_checkpoint.first_entry() {
            if *entry.key() > checkpoint {
                break;
            }
            ack_all(entry.get_mut()).await?;
            entry.remove();
        }
        Ok(())
    }
}

/// A validated `nats` sink.
#[derive(Debug, Clone)]
pub struct NatsSinkConfig {
    connection: Connection,
}

impl NatsSinkConfig {
    /// Validates the options of a `nats` sink.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        if connection.subject.contains(['*', '>']) {
            return Err(Error::option(
                CONNECTOR,
                format!(
                    "a sink publishes to one subject; '{}' has wildcards",
                    connection.subject
                ),
            ));
        }
        options.finish()?;
        Ok(Self { connection })
    }
}

#[async_trait::async_trait]
impl SinkConfig for NatsSinkConfig {
    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        let client = self.connection.connect().await?;
        let js = match &self.connection.stream {
            Some(stream) => Some(self.connection.jetstream(client.clone(), stream).await?.0),
            None => None,
        };
        Ok(Box::new(NatsSink {
            client,
            js,
            subject: self.connection.subject.clone(),
            encoder: MessageEncoder::try_new(
                &self.connection.format,
                &schema,
                &self.connection.subject,
            )
            .await?,
            in_flight: Vec::new(),
            metrics: ctx.metrics,
        }))
    }
}

/// A running `nats` sink.
struct NatsSink {
    client: async_nats::Client,
    js: Option<jetstream::Context>,
    subject: String,
    encoder: MessageEncoder,
    in_flight: Vec<jetstream::context::PublishAckFuture>,
    metrics: Arc<ConnectorMetrics>,
}

impl NatsSink {
    /// Waits for the server's acknowledgements (JetStream) or flushes (core NATS).
    async fn confirm(&mut self) -> Result<()> {
        for ack in self.in_flight.drain(..) {
            ack.await.map_err(|e| Error::service(CONNECTOR, e))?;
        }
        self.client
            .flush()
            .await
            .map_err(|e| Error::service(CONNECTOR, e))
    }
}

#[async_trait::async_trait]
impl Sink for NatsSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = self.encoder.encode(&batch)?;
        let mut bytes = 0u64;
        for payload in rows {
            bytes += payload.len() as u64;
            let payload = Bytes::from(payload);
            match &self.js {
                Some(js) => {
                    let ack = js
                        .publish(self.subject.clone(), payload)
                        .await
                        .map_err(|e| Error::service(CONNECTOR, e))?;
                    self.in_flight.push(ack);
                    if self.in_flight.len() >= 10_000 {
                        self.confirm().await?;
                    }
                }
                None => self
                    .client
                    .publish(self.subject.clone(), payload)
                    .await
                    .map_err(|e| Error::service(CONNECTOR, e))?,
            }
        }
        self.metrics
            .records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.confirm().await
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Precommit> {
        self.confirm().await?;
        Ok(Precommit::default())
    }
}
