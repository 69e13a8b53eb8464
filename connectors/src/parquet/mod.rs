//! The `parquet` sink: writes a pipeline's rows as Parquet files into a folder on the local
//! filesystem or an object store, rolling files by rows, bytes or age and optionally
//! partitioning them into Hive-style `col=value/` folders (DESIGN.md §4).
//!
//! This module validates the sink's options; the running sink is in `sink`.

mod sink;

use std::time::Duration;

use ::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::arrow::datatypes::{SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::file::sink::output_location;
use crate::options::Options;
use crate::sink::{Committed, Sink, SinkConfig, SinkContext};
use crate::store::Location;

/// The connector's name in messages.
const CONNECTOR: &str = "parquet";
/// Rows per file unless `rollover_rows` says otherwise.
pub const DEFAULT_ROLLOVER_ROWS: u64 = 1_000_000;
/// Bytes per file unless `rollover_bytes` says otherwise: 128 MiB.
pub const DEFAULT_ROLLOVER_BYTES: u64 = 128 * 1024 * 1024;

/// A validated `parquet` sink.
#[derive(Debug, Clone)]
pub struct ParquetSinkConfig {
    location: Location,
    rollover_rows: u64,
    rollover_bytes: u64,
    rollover_seconds: Option<Duration>,
    partition_by: Vec<String>,
    compression: Compression,
    /// The unit timestamps are written in: microseconds unless `timestamp_unit` says
    /// otherwise, since Spark and Hive cannot read nanosecond timestamps.
    timestamp_unit: TimeUnit,
}

impl ParquetSinkConfig {
    /// Validates the options of a `parquet` sink. Nothing is read or written here; the
    /// `partition_by` columns are checked against the input schema when the sink opens.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let path = options.require_string("path")?;
        let aws = options.take_prefixed("aws_");
        let rollover_rows = options
            .take_u64("rollover_rows")?
            .unwrap_or(DEFAULT_ROLLOVER_ROWS);
        let rollover_bytes = options
            .take_u64("rollover_bytes")?
            .unwrap_or(DEFAULT_ROLLOVER_BYTES);
        for (key, value) in [
            ("rollover_rows", rollover_rows),
            ("rollover_bytes", rollover_bytes),
        ] {
            if value == 0 {
                return Err(Error::option(
                    CONNECTOR,
                    format!("option '{key}' must be at least 1"),
                ));
            }
        }
        let rollover_seconds = options.take_seconds("rollover_seconds")?;
        let partition_by = options.take_list("partition_by");
        for (i, column) in partition_by.iter().enumerate() {
            if partition_by[..i].contains(column) {
                return Err(Error::option(
                    CONNECTOR,
                    format!("option 'partition_by' names column '{column}' twice"),
                ));
            }
        }
        let compression = match options
            .take_choice(
                "compression",
                &["snappy", "zstd", "gzip", "lz4", "none", "uncompressed"],
            )?
            .as_deref()
        {
            None | Some("snappy") => Compression::SNAPPY,
            Some("zstd") => Compression::ZSTD(ZstdLevel::default()),
            Some("gzip") => Compression::GZIP(GzipLevel::default()),
            Some("lz4") => Compression::LZ4_RAW,
            Some(_) => Compression::UNCOMPRESSED,
        };
        let timestamp_unit = match options
            .take_choice("timestamp_unit", &["millis", "micros", "nanos"])?
            .as_deref()
        {
            Some("millis") => TimeUnit::Millisecond,
            Some("nanos") => TimeUnit::Nanosecond,
            _ => TimeUnit::Microsecond,
        };
        options.finish()?;
        let location = output_location(CONNECTOR, &path, &aws)?;
        Ok(Self {
            location,
            rollover_rows,
            rollover_bytes,
            rollover_seconds,
            partition_by,
            compression,
            timestamp_unit,
        })
    }
}

#[async_trait::async_trait]
impl SinkConfig for ParquetSinkConfig {
    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(sink::ParquetSink::try_new(self, &schema, ctx)?))
    }

    async fn commit(&self, _checkpoint: u64, pending: &serde_json::Value) -> Result<Committed> {
        crate::commit::commit(&self.location.store, pending).await?;
        Ok(Committed::Visible)
    }

    async fn recover(&self, sink: &str, restored: Option<u64>) -> Result<()> {
        crate::commit::recover(&self.location.store, &self.location.prefix, sink, restored).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> Options {
        Options::new(
            "parquet",
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn parses_and_rejects_options() {
        let config = ParquetSinkConfig::try_new(opts(&[
            ("path", "memory://bucket/out"),
            ("rollover_seconds", "10s"),
            ("partition_by", "a, b"),
            ("compression", "ZSTD"),
        ]))
        .unwrap();
        assert_eq!(config.rollover_seconds, Some(Duration::from_secs(10)));
        assert_eq!(config.partition_by, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(config.compression, Compression::ZSTD(ZstdLevel::default()));
        let config = ParquetSinkConfig::try_new(opts(&[
            ("path", "memory://bucket/out"),
            ("rollover_seconds", "2"),
        ]))
        .unwrap();
        assert_eq!(config.rollover_seconds, Some(Duration::from_secs(2)));

        let err = ParquetSinkConfig::try_new(opts(&[("path", "/tmp/out"), ("rollover_rowz", "5")]))
            .unwrap_err();
        assert!(err.to_string().contains("'rollover_rowz'"), "{err}");
        let err =
            ParquetSinkConfig::try_new(opts(&[("path", "/tmp/out"), ("compression", "brotli")]))
                .unwrap_err();
        assert!(err.to_string().contains("'compression'"), "{err}");
        let err =
            ParquetSinkConfig::try_new(opts(&[("path", "/tmp/out"), ("rollover_seconds", "soon")]))
                .unwrap_err();
        assert!(err.to_string().contains("'rollover_seconds'"), "{err}");
        let err = ParquetSinkConfig::try_new(opts(&[("rollover_rows", "5")])).unwrap_err();
        assert!(err.to_string().contains("'path'"), "{err}");
    }
}
