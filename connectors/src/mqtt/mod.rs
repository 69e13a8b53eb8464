//! The `mqtt` source and sink (IoT devices through a broker such as Mosquitto), on rumqttc.
//!
//! The source subscribes to `topic` (wildcards allowed) and turns payloads into rows with
//! the message formats; it resubscribes after every reconnect, and reconnects with backoff
//! when the broker goes away. MQTT keeps no replayable log, so after a restart the source
//! continues with what the broker delivers from then on. The sink publishes one message per
//! row and, at every checkpoint, waits until the broker acknowledged everything published
//! before it (QoS 1 or 2): at-least-once.
//!
//! Options: `url` (`mqtt://host:1883`, or `mqtt://user:password@host:1883` for a broker that
//! wants a login; percent-encoded), `topic` (a valid filter, checked at CREATE), `qos` (0, 1
//! or 2; default 1), `client_id`, `format` (json, csv, raw, avro).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::format::message::{MessageBatcher, MessageEncoder, MessageFormat};
use crate::metrics::ConnectorMetrics;
use crate::options::Options;
use crate::sink::{Precommit, Sink, SinkConfig, SinkContext};
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "mqtt";
/// Pause after a connection error before the next attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a checkpoint waits for the broker's acknowledgements.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// What both directions share.
#[derive(Debug, Clone)]
struct Connection {
    host: String,
    port: u16,
    /// User name and password from the URL (`mqtt://user:password@host`).
    credentials: Option<(String, String)>,
    topic: String,
    qos: QoS,
    client_id: Option<String>,
    format: MessageFormat,
}

impl Connection {
    fn from_options(options: &mut Options) -> Result<Self> {
        let url = options.require_string("url")?;
        let parsed = url::Url::parse(&url).map_err(|e| {
            Error::option(
                CONNECTOR,
                format!("option 'url' is not a URL ('{url}'): {e}"),
            )
        })?;
        if parsed.scheme() != "mqtt" && parsed.scheme() != "tcp" {
            return Err(Error::option(
                CONNECTOR,
                format!("option 'url' must be mqtt://host:port, got '{url}'"),
            ));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| Error::option(CONNECTOR, format!("option 'url' has no host: '{url}'")))?
            .to_string();
        let port = parsed.port().unwrap_or(1883);
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|s| s.into_owned())
                .map_err(|e| Error::option(CONNECTOR, format!("option 'url': {e}")))
        };
        let credentials = match parsed.username() {
            "" => None,
            user => Some((decode(user)?, decode(parsed.password().unwrap_or(""))?)),
        };
        let topic = options.require_string("topic")?;
        let qos = match options.take_choice("qos", &["0", "1", "2"])?.as_deref() {
            Some("0") => QoS::AtMostOnce,
            Some("2") => QoS::ExactlyOnce,
            _ => QoS::AtLeastOnce,
        };
        let client_id = options.take_string("client_id");
        let format = MessageFormat::from_options(CONNECTOR, options)?;
        Ok(Self {
            host,
            port,
            credentials,
            topic,
            qos,
            client_id,
            format,
        })
    }

    fn client(&self, role: &str) -> (AsyncClient, EventLoop) {
        let id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{role}-{}", crate::commit::unique_suffix()));
        let mut opts = MqttOptions::new(id, self.host.clone(), self.port);
        opts.set_keep_alive(Duration::from_secs(10));
        opts.set_max_packet_size(16 << 20, 16 << 20);
        if let Some((user, password)) = &self.credentials {
            opts.set_credentials(user, password);
        }
        AsyncClient::new(opts, 1024)
    }
}

/// A validated `mqtt` source.
#[derive(Debug, Clone)]
pub struct MqttSourceConfig {
    connection: Connection,
    schema: SchemaRef,
}

impl MqttSourceConfig {
    /// Validates the options of an `mqtt` source with its declared columns.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        // Else the broker refuses the subscription at run time and the source reads nothing.
        if !rumqttc::valid_filter(&connection.topic) {
            return Err(Error::option(
                CONNECTOR,
                format!(
                    "option 'topic' is not a valid MQTT topic filter: '{}'",
                    connection.topic
                ),
            ));
        }
        let schema = connection.format.schema(CONNECTOR, declared)?;
        connection.format.decoder(&schema)?;
        options.finish()?;
        Ok(Self { connection, schema })
    }
}

#[async_trait::async_trait]
impl SourceConfig for MqttSourceConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        false
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        let (client, eventloop) = self.connection.client("source");
        let (tx, rx) = mpsc::channel(ctx.batch_size.max(16));
        let poller = tokio::spawn(receive(
            client,
            eventloop,
            self.connection.topic.clone(),
            self.connection.qos,
            tx,
            Arc::clone(&ctx.metrics),
        ));
        Ok(Box::new(MqttSource {
            rx,
            poller,
            batcher: MessageBatcher::new(
                self.connection.format.decoder(&self.schema)?,
                format!("mqtt:{}", self.connection.topic),
            ),
            ctx,
        }))
    }
}

/// Drives the client: (re)subscribes on every connection and forwards payloads.
async fn receive(
    client: AsyncClient,
    mut eventloop: EventLoop,
    topic: String,
    qos: QoS,
    tx: mpsc::Sender<Bytes>,
    metrics: Arc<ConnectorMetrics>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if let Err(e) = client.try_subscribe(topic.clone(), qos) {
                    tracing::warn!(topic, error = %e, "mqtt subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p.payload).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if tx.is_closed() {
                    return;
                }
                metrics.error();
                tracing::warn!(topic, error = %e, "mqtt connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
}

/// A running `mqtt` source.
struct MqttSource {
    rx: mpsc::Receiver<Bytes>,
    poller: JoinHandle<()>,
    batcher: MessageBatcher,
    ctx: SourceContext,
}

impl Drop for MqttSource {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

#[async_trait::async_trait]
impl Source for MqttSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.batcher
            .next_from(&mut self.rx, &self.ctx, false, || {
                Error::service(CONNECTOR, "the mqtt client stopped")
            })
            .await
    }
}

/// A validated `mqtt` sink.
#[derive(Debug, Clone)]
pub struct MqttSinkConfig {
    connection: Connection,
}

impl MqttSinkConfig {
    /// Validates the options of an `mqtt` sink.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        if connection.topic.contains(['+', '#']) {
            return Err(Error::option(
                CONNECTOR,
                format!(
                    "a sink publishes to one topic; '{}' has wildcards",
                    connection.topic
                ),
            ));
        }
        options.finish()?;
        Ok(Self { connection })
    }
}

#[async_trait::async_trait]
impl SinkConfig for MqttSinkConfig {
    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        let (client, eventloop) = self.connection.client("sink");
        let acked = Arc::new(AtomicU64::new(0));
        let poller = tokio::spawn(acknowledge(
            eventloop,
            self.connection.qos,
            Arc::clone(&acked),
            Arc::clone(&ctx.metrics),
        ));
        Ok(Box::new(MqttSink {
            client,
            poller,
            topic: self.connection.topic.clone(),
            qos: self.connection.qos,
            encoder: MessageEncoder::try_new(
                &self.connection.format,
                &schema,
                &self.connection.topic,
            )
            .await?,
            published: 0,
            acked,
            metrics: ctx.metrics,
        }))
    }
}

/// Drives the sink's client, counting what the broker acknowledged.
async fn acknowledge(
    mut eventloop: EventLoop,
    qos: QoS,
    acked: Arc<AtomicU64>,
    metrics: Arc<ConnectorMetrics>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                metrics.error();
                tracing::warn!(error = %e, "mqtt sink connection lost; reconnecting");
                tokio::time::sleep(RECONNECT_BACKOFF).await;
            }
        }
    }
}

/// A running `mqtt` sink.
struct MqttSink {
    client: AsyncClient,
    poller: JoinHandle<()>,
    topic: String,
    qos: QoS,
    encoder: MessageEncoder,
    published: u64,
    acked: Arc<AtomicU64>,
    metrics: Arc<ConnectorMetrics>,
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl MqttSink {
    /// Waits until the broker acknowledged everything published.
    async fn confirm(&self) -> Result<()> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        while self.acked.load(Ordering::Relaxed) < self.published {
            if Instant::now() > deadline {
                return Err(Error::service(
                    CONNECTOR,
                    format!(
                        "the broker acknowledged {} of {} messages within {ACK_TIMEOUT:?}",
                        self.acked.load(Ordering::Relaxed),
                        self.published
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for MqttSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = self.encoder.encode(&batch)?;
        let mut bytes = 0u64;
        for payload in rows {
            bytes += payload.len() as u64;
            self.client
                .publish(self.topic.clone(), self.qos, false, payload)
                .await
                .map_err(|e| Error::service(CONNECTOR, e))?;
            self.published += 1;
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
