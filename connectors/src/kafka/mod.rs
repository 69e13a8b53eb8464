//! The `kafka` source and sink, on librdkafka through the rdkafka crate (what Arroyo and
//! RisingWave use): consumer groups, transactions and every broker quirk are handled by the
//! client the field trusts.
//!
//! Options: `bootstrap_servers`, `topic`, `group_id`, `start` = `earliest` | `latest`,
//! `bounded` = `latest`, `isolation_level` = `read_uncommitted` | `read_committed`
//! (source), `format` (json, csv, raw, avro; with `avro_schema`, `schema_registry` and
//! `schema_subject`), `key`, `delivery_guarantee` = `at_least_once` | `exactly_once` and
//! `transactional_id_prefix` (sink), and any librdkafka setting as `properties.<name>`
//! (`properties.security.protocol = 'SSL'`).

mod partition_queue;
mod sink;
mod source;
mod transaction;

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::config::ClientConfig;

use crate::error::{Error, Result};
use crate::format::message::MessageFormat;
use crate::options::Options;
use crate::sink::{Committed, Sink, SinkConfig, SinkContext};
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "kafka";

/// Where a source starts when no checkpoint says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
}

/// Which messages of transactional producers a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Every message, including those of aborted and still open transactions.
    ReadUncommitted,
    /// Only committed messages (and those of no transaction): what an exactly-once
    /// producer's consumers should read. Reading stops at the first open transaction
    /// until it ends.
    ReadCommitted,
}

impl Isolation {
    fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadUncommitted => "read_uncommitted",
            Isolation::ReadCommitted => "read_committed",
        }
    }
}

/// The options both directions share.
#[derive(Debug, Clone)]
struct Connection {
    bootstrap: String,
    topic: String,
    /// `properties.*` options, passed to librdkafka as they are.
    properties: Vec<(String, String)>,
}

impl Connection {
    fn from_options(options: &mut Options) -> Result<Self> {
        let bootstrap = options.require_string("bootstrap_servers")?;
        let topic = options.require_string("topic")?;
        let properties = options
            .take_prefixed("properties.")
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches("properties.").to_string(), v))
            .collect();
        Ok(Self {
            bootstrap,
            topic,
            properties,
        })
    }

    /// Checks the `properties.*` at CREATE time: none may set what the connector owns
    /// (`reserved`: the property and what to use instead), and librdkafka must accept every
    /// name and value, so that a typo is not found only when the pipeline starts.
    fn validate_properties(&self, reserved: &[(&str, &str)]) -> Result<()> {
        for (key, _) in &self.properties {
            if let Some((_, instead)) = reserved.iter().find(|(r, _)| r == key) {
                return Err(Error::option(
                    CONNECTOR,
                    format!("option 'properties.{key}' is not allowed: {instead}"),
                ));
            }
        }
        let mut config = ClientConfig::new();
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
            .create_native_config()
            .map(drop)
            .map_err(|e| Error::option(CONNECTOR, format!("in the properties.* options: {e}")))
    }

    /// The client's settings: Sluice's `tunables`, then the user's `properties.*`, which
    /// may change them. Settings the connector's guarantees rest on are set by the caller
    /// afterwards, so that no property overrides them.
    fn client_config(&self, tunables: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        // `localhost` may resolve to an IPv6 address a local broker does not listen on.
        if self.bootstrap.contains("127.0.0.1") {
            config.set("broker.address.family", "v4");
        }
        for (k, v) in tunables {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}

/// A validated `kafka` source.
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    connection: Connection,
    group_id: String,
    start: Start,
    bounded: bool,
    isolation: Isolation,
    format: MessageFormat,
    schema: SchemaRef,
}

impl KafkaSourceConfig {
    /// Validates the options of a `kafka` source with its declared columns.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        connection.validate_properties(&[
            ("bootstrap.servers", "use the option 'bootstrap_servers'"),
            ("metadata.broker.list", "use the option 'bootstrap_servers'"),
            ("group.id", "use the option 'group_id'"),
            ("auto.offset.reset", "use the option 'start'"),
            (
                "enable.auto.commit",
                "offsets are committed with each checkpoint",
            ),
            (
                "enable.auto.offset.store",
                "offsets are committed with each checkpoint",
            ),
            (
                "enable.partition.eof",
                "the source finds a partition's end itself",
            ),
            ("isolation.level", "use the option 'isolation_level'"),
        ])?;
        let group_id = options
            .take_string("group_id")
            .unwrap_or_else(|| format!("sluice-{}", connection.topic));
        let start = match options
            .take_choice("start", &["earliest", "latest"])?
            .as_deref()
        {
            Some("latest") => Start::Latest,
            _ => Start::Earliest,
        };
        let bounded = options.take_choice("bounded", &["latest"])?.is_some();
        let isolation = match options
            .take_choice("isolation_level", &["read_uncommitted", "read_committed"])?
            .as_deref()
        {
            Some("read_committed") => Isolation::ReadCommitted,
            _ => Isolation::ReadUncommitted,
        };
        let format = MessageFormat::from_options(CONNECTOR, &mut options)?;
        let schema = format.schema(CONNECTOR, declared)?;
        // Build the decoder once now, so that a column the format cannot decode is a
        // CREATE-time error.
        format.decoder(&schema)?;
        options.finish()?;
        Ok(Self {
            connection,
            group_id,
            start,
            bounded,
            isolation,
            format,
            schema,
        })
    }
}

#[async_trait::async_trait]
impl SourceConfig for KafkaSourceConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        self.bounded
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(
            source::KafkaSource::open(self.clone(), ctx).await?,
        ))
    }
}

/// What the `kafka` sink promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    /// Every checkpoint waits for the broker to acknowledge what was sent before it; a
    /// restart may send some rows again.
    AtLeastOnce,
    /// One Kafka transaction per checkpoint, committed when the checkpoint is stored:
    /// `read_committed` consumers see every row once.
    ExactlyOnce,
}

/// A validated `kafka` sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    connection: Connection,
    format: MessageFormat,
    key: Vec<String>,
    delivery: Delivery,
    /// Transactional ids are `<prefix>-<checkpoint>`; `sluice-<sink name>` if not given.
    transactional_id_prefix: Option<String>,
    /// The transactions staged by the running sink, which [`SinkConfig::commit`] commits.
    staged: transaction::Staged,
}

impl KafkaSinkConfig {
    /// Validates the options of a `kafka` sink.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let connection = Connection::from_options(&mut options)?;
        connection.validate_properties(&[
            ("bootstrap.servers", "use the option 'bootstrap_servers'"),
            ("metadata.broker.list", "use the option 'bootstrap_servers'"),
            (
                "transactional.id",
                "use delivery_guarantee = 'exactly_once', with 'transactional_id_prefix' if the default (sluice-<sink name>) does not suit",
            ),
        ])?;
        let format = MessageFormat::from_options(CONNECTOR, &mut options)?;
        let key = options.take_list("key");
        let delivery = match options
            .take_choice("delivery_guarantee", &["at_least_once", "exactly_once"])?
            .as_deref()
        {
            Some("exactly_once") => Delivery::ExactlyOnce,
            _ => Delivery::AtLeastOnce,
        };
        let transactional_id_prefix = options.take_string("transactional_id_prefix");
        if transactional_id_prefix.is_some() && delivery != Delivery::ExactlyOnce {
            return Err(Error::option(
                CONNECTOR,
                "option 'transactional_id_prefix' needs delivery_guarantee = 'exactly_once'",
            ));
        }
        if transactional_id_prefix.as_deref() == Some("") {
            return Err(Error::option(
                CONNECTOR,
                "option 'transactional_id_prefix' must not be empty",
            ));
        }
        options.finish()?;
        Ok(Self {
            connection,
            format,
            key,
            delivery,
            transactional_id_prefix,
            staged: transaction::Staged::default(),
        })
    }

    /// The producer settings both the running sink and the commit use. `acks=all` and
    /// idempotence come with transactions. The transaction timeout, 10 minutes, must
    /// outlast a checkpoint interval and stay within the broker's cap
    /// (`transaction.max.timeout.ms`, 15 minutes by default); librdkafka lowers the message
    /// timeout to it.
    fn producer_config(&self) -> ClientConfig {
        let tunables: &[(&str, &str)] = match self.delivery {
            Delivery::AtLeastOnce => &[("linger.ms", "5"), ("message.timeout.ms", "300000")],
            Delivery::ExactlyOnce => &[
                ("linger.ms", "5"),
                ("transaction.timeout.ms", DEFAULT_TRANSACTION_TIMEOUT),
            ],
        };
        self.connection.client_config(tunables)
    }

    /// A transaction stays open for a checkpoint interval, then until the checkpoint is
    /// stored and committed: with a transaction timeout shorter than twice the interval,
    /// the broker would abort transactions before their commit.
    ///
    /// # Errors
    /// An [`Error::Option`] saying so.
    fn check_transaction_timeout(&self, interval: std::time::Duration) -> Result<()> {
        let configured = self
            .connection
            .properties
            .iter()
            .find(|(k, _)| k == "transaction.timeout.ms")
            .map(|(_, v)| v.as_str());
        let ms = match configured {
            Some(v) => v.trim().parse::<u64>().map_err(|_| {
                Error::option(
                    CONNECTOR,
                    format!("properties.transaction.timeout.ms must be milliseconds, not '{v}'"),
                )
            })?,
            None => DEFAULT_TRANSACTION_TIMEOUT_MS,
        };
        if u128::from(ms) <= 2 * interval.as_millis() {
            return Err(Error::option(
                CONNECTOR,
                format!(
                    "delivery_guarantee = 'exactly_once' needs a transaction timeout above twice the checkpoint interval ({} ms), and transaction.timeout.ms is {ms}: checkpoint more often or raise properties.transaction.timeout.ms (within the broker's transaction.max.timeout.ms)",
                    interval.as_millis()
                ),
            ));
        }
        Ok(())
    }
}

/// The sink's transaction timeout unless `properties.transaction.timeout.ms` says otherwise:
/// 10 minutes, within the broker's default cap of 15.
const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 600_000;
const DEFAULT_TRANSACTION_TIMEOUT: &str = "600000";

#[async_trait::async_trait]
impl SinkConfig for KafkaSinkConfig {
    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(
            sink::KafkaSink::try_new(self, &schema, ctx).await?,
        ))
    }

    async fn commit(&self, _checkpoint: u64, pending: &serde_json::Value) -> Result<Committed> {
        let marker_config = self.connection.client_config(&[]);
        transaction::commit(
            &self.staged,
            &self.producer_config(),
            &marker_config,
            pending,
        )
        .await
    }
}

/// A Kafka client error as a connector error: the broker's side (external).
fn kafka_error(e: rdkafka::error::KafkaError) -> Error {
    Error::service(CONNECTOR, e)
}
