//! The `nats` source and sink, on async-nats.
//!
//! With `stream`, the source reads a JetStream stream through a durable pull consumer and
//! acknowledges each message only once the checkpoint that covers it is complete, so a
//! crash redelivers exactly what no checkpoint covered (without checkpoints it acknowledges
//! as it reads). Without `stream` it subscribes to core NATS, which keeps nothing to replay.
//! The sink publishes one message per row: with `stream` through JetStream, waiting at
//! every checkpoint for the server's acknowledgements (at-least-once); otherwise to core
//! NATS, flushed at every checkpoint.
//!
//! Options: `servers` (`nats://127.0.0.1:4222`), `subject`, `stream`, `durable` (the
//! consumer's name; default `sluice-<stream>`), `format` (json, csv, raw).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::Acker};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{FutureExt, StreamExt};

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
        let client = self.connection.connect().await?;
        let input = match &self.connection.stream {
            None => Input::Core(
                client
                    .subscribe(self.connection.subject.clone())
                    .await
                    .map_err(|e| Error::service(CONNECTOR, e))?,
            ),
            Some(stream) => {
                let (_, st) = self.connection.jetstream(client, stream).await?;
                let durable = self
                    .durable
                    .clone()
                    .unwrap_or_else(|| format!("sluice-{stream}"));
                let consumer: jetstream::consumer::PullConsumer = st
                    .get_or_create_consumer(
                        &durable,
                        pull::Config {
                            durable_name: Some(durable.clone()),
                            ack_policy: jetstream::consumer::AckPolicy::Explicit,
                            // Messages wait for the checkpoint that covers them.
                            ack_wait: Duration::from_secs(600),
                            max_ack_pending: 1_000_000,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| Error::service(CONNECTOR, format!("consumer '{durable}': {e}")))?;
                Input::JetStream(Box::new(
                    consumer
                        .messages()
                        .await
                        .map_err(|e| Error::service(CONNECTOR, e))?,
                ))
            }
        };
        Ok(Box::new(NatsSource {
            input,
            batcher: MessageBatcher::new(
                self.connection.format.decoder(&self.schema)?,
                format!("nats:{}", self.connection.subject),
            ),
            pending_acks: Vec::new(),
            handed_out: Vec::new(),
            by_checkpoint: BTreeMap::new(),
            to_ack: Vec::new(),
            ctx,
        }))
    }
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
    ctx: SourceContext,
}

impl NatsSource {
    /// The next message: `Some(Some(..))` one, `Some(None)` none now, `None` the input ended.
    async fn next_message(
        &mut self,
        wait: Option<Duration>,
    ) -> Result<Option<Option<(Bytes, Option<Acker>)>>> {
        let next = match &mut self.input {
            Input::Core(sub) => match wait {
                None => sub.next().now_or_never(),
                Some(w) => tokio::time::timeout(w, sub.next()).await.ok(),
            }
            .map(|m| m.map(|m| Ok((m.payload, None)))),
            Input::JetStream(stream) => match wait {
                None => stream.next().now_or_never(),
                Some(w) => tokio::time::timeout(w, stream.next()).await.ok(),
            }
            .map(|m| {
                m.map(|m| {
                    m.map(|m| {
                        let (msg, acker) = m.split();
                        (msg.payload, Some(acker))
                    })
                    .map_err(|e| Error::service(CONNECTOR, e))
                })
            }),
        };
        match next {
            None => Ok(Some(None)),
            Some(None) => Ok(None),
            Some(Some(Ok(m))) => Ok(Some(Some(m))),
            Some(Some(Err(e))) => {
                tracing::warn!(error = %e, "nats consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Ok(Some(None))
            }
        }
    }

    fn accept(&mut self, payload: &[u8], acker: Option<Acker>) {
        self.batcher.push(payload);
        self.pending_acks.extend(acker);
    }

    /// Decodes the waiting messages. Nothing is awaited once they are taken, so a
    /// cancelled call loses no batch: without checkpoints, their acknowledgements go out
    /// at the start of the next call.
    async fn emit(&mut self) -> Result<RecordBatch> {
        // Before anything is taken: a cancelled registry lookup loses nothing.
        self.batcher.prepare().await?;
        let acks = std::mem::take(&mut self.pending_acks);
        let batch = self.batcher.emit(&self.ctx)?;
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
