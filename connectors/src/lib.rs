//! Sluice's connectors: the [`Source`] and [`Sink`] traits, the formats they share, and one
//! module per connector. No SQL lives here: the engine hands over a connector name, the
//! `WITH (...)` options and the declared columns, and gets back a validated config.
#![warn(missing_docs)]

pub mod bad_records;
pub mod commit;
pub mod console;
pub mod error;
pub mod file;
pub mod format;
pub mod generator;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod nats;
pub mod nexmark;
pub mod options;
pub mod parquet;
pub mod postgres;
pub mod schema_map;
pub mod sink;
pub mod source;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;

pub use bad_records::{BadRecords, OnError};
pub use error::{Error, ErrorKind, Result};
pub use metrics::ConnectorMetrics;
pub use options::Options;
pub use sink::{Committed, Precommit, RunCheckpoints, Sink, SinkConfig, SinkContext, UpdateKey};
pub use source::{Source, SourceConfig, SourceContext, Split};

/// The source connectors this build knows.
pub const SOURCE_CONNECTORS: &[&str] = &[
    "file",
    "generator",
    "nexmark",
    "kafka",
    "mqtt",
    "nats",
    "webhook",
];
/// The sink connectors this build knows.
pub const SINK_CONNECTORS: &[&str] = &[
    "parquet", "file", "console", "kafka", "mqtt", "nats", "postgres",
];

/// A source declaration after validation: the connector's config plus the options every
/// source shares (`batch_size`, `linger`, `idle_timeout`, `on_error`).
#[derive(Debug, Clone)]
pub struct SourceDecl {
    /// The connector's own validated config.
    pub config: Arc<dyn SourceConfig>,
    /// Rows per batch.
    pub batch_size: usize,
    /// How long a source waits to fill a batch.
    pub linger: Duration,
    /// After this long without rows, the source stops holding back the watermark of the
    /// operators it feeds together with other inputs.
    pub idle_timeout: Option<Duration>,
    /// What happens to bad records.
    pub on_error: OnError,
}

impl SourceDecl {
    /// The schema the source produces.
    pub fn schema(&self) -> SchemaRef {
        self.config.schema()
    }
}

/// The largest `batch_size` a source takes: 16 Mi rows, far past where larger batches
/// stop paying, and small enough for every buffer sized by it.
pub const MAX_BATCH_SIZE: usize = 1 << 24;

/// The most bytes a source's batch may take where the source knows its row size
/// (`batch_size` × the widest row): 256 MiB.
pub const MAX_BATCH_BYTES: u64 = 256 << 20;

/// Validates a `CREATE SOURCE`: the connector exists, every option is known and well typed,
/// the declared columns fit the connector. `declared` is `None` when no column list was given.
///
/// # Errors
/// An [`Error::Option`] naming the connector, option or column at fault, or an input error
/// (a missing file) where the connector must look at its input to know its schema.
pub async fn source_decl(
    connector: &str,
    mut options: Options,
    declared: Option<SchemaRef>,
) -> Result<SourceDecl> {
    let batch_size = options
        .take_u64("batch_size")?
        .map(|n| n as usize)
        .unwrap_or(source::DEFAULT_BATCH_SIZE);
    if !(1..=MAX_BATCH_SIZE).contains(&batch_size) {
        return Err(Error::option(
            connector,
            format!("option 'batch_size' must be from 1 to {MAX_BATCH_SIZE}, not {batch_size}"),
        ));
    }
    let linger = options
        .take_duration("linger")?
        .unwrap_or(source::DEFAULT_LINGER);
    let idle_timeout = options.take_duration("idle_timeout")?;
    let on_error = OnError::from_options(&mut options)?;
    let config: Arc<dyn SourceConfig> = match connector.to_ascii_lowercase().as_str() {
        "file" => Arc::new(file::FileSourceConfig::try_new(options, declared).await?),
        "generator" => Arc::new(generator::GeneratorConfig::try_new(options, declared)?),
        "nexmark" => Arc::new(nexmark::NexmarkConfig::try_new(options, declared)?),
        "kafka" => Arc::new(kafka::KafkaSourceConfig::try_new(options, declared)?),
        "mqtt" => Arc::new(mqtt::MqttSourceConfig::try_new(options, declared)?),
        "nats" => Arc::new(nats::NatsSourceConfig::try_new(options, declared)?),
        "webhook" => Arc::new(webhook::WebhookSourceConfig::try_new(options, declared)?),
        other => {
            return Err(Error::Option {
                connector: other.to_string(),
                message: format!(
                    "unknown source connector; known: {}",
                    SOURCE_CONNECTORS.join(", ")
                ),
            });
        }
    };
    if let Some(row) = config.max_row_bytes() {
        let bytes = row.saturating_mul(batch_size as u64);
        if bytes > MAX_BATCH_BYTES {
            return Err(Error::option(
                connector,
                format!(
                    "a batch of {batch_size} rows of up to {row} bytes takes {bytes} bytes, over the limit of {MAX_BATCH_BYTES} bytes: lower 'batch_size' or the field lengths"
                ),
            ));
        }
    }
    Ok(SourceDecl {
        config,
        batch_size,
        linger,
        idle_timeout,
        on_error,
    })
}

/// Validates a `CREATE SINK`'s connector and options.
///
/// # Errors
/// An [`Error::Option`] naming the connector or option at fault.
pub fn sink_config(connector: &str, options: Options) -> Result<Arc<dyn SinkConfig>> {
    Ok(match connector.to_ascii_lowercase().as_str() {
        "parquet" => Arc::new(parquet::ParquetSinkConfig::try_new(options)?),
        "file" => Arc::new(file::FileSinkConfig::try_new(options)?),
        "console" => Arc::new(console::ConsoleSinkConfig::try_new(options)?),
        "kafka" => Arc::new(kafka::KafkaSinkConfig::try_new(options)?),
        "mqtt" => Arc::new(mqtt::MqttSinkConfig::try_new(options)?),
        "nats" => Arc::new(nats::NatsSinkConfig::try_new(options)?),
        "postgres" => Arc::new(postgres::PostgresSinkConfig::try_new(options)?),
        other => {
            return Err(Error::Option {
                connector: other.to_string(),
                message: format!(
                    "unknown sink connector; known: {}",
                    SINK_CONNECTORS.join(", ")
                ),
            });
        }
    })
}
