//! The `console` sink: prints each batch as a table on standard output as it arrives. This
//! is the command line's own output (`sluice run`), so printing is its job.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::error::Result;
use crate::metrics::ConnectorMetrics;
use crate::options::Options;
use crate::sink::{Sink, SinkConfig, SinkContext};

/// A validated `console` sink. It takes no options.
#[derive(Debug, Clone, Default)]
pub struct ConsoleSinkConfig;

impl ConsoleSinkConfig {
    /// Validates the options of a `console` sink: there are none.
    ///
    /// # Errors
    /// An [`crate::Error::Option`] naming any option given.
    pub fn try_new(options: Options) -> Result<Self> {
        options.finish()?;
        Ok(Self)
    }
}

#[async_trait::async_trait]
impl SinkConfig for ConsoleSinkConfig {
    async fn open(&self, _schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(ConsoleSink {
            metrics: ctx.metrics,
        }))
    }
}

/// A running `console` sink.
#[derive(Debug)]
struct ConsoleSink {
    metrics: Arc<ConnectorMetrics>,
}

#[async_trait::async_trait]
impl Sink for ConsoleSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let table = pretty_format_batches(std::slice::from_ref(&batch))?.to_string();
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{table}")?;
            out.flush()?;
        }
        self.metrics
            .records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        self.metrics
            .bytes
            .fetch_add(table.len() as u64 + 1, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        std::io::stdout().lock().flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_no_options() {
        assert!(ConsoleSinkConfig::try_new(Options::new("console", Vec::new())).is_ok());
        let err = ConsoleSinkConfig::try_new(Options::new(
            "console",
            vec![("format".to_string(), "csv".to_string())],
        ))
        .unwrap_err();
        assert!(err.to_string().contains("'format'"), "{err}");
    }

    #[tokio::test]
    async fn counts_printed_rows() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .unwrap();
        let metrics = Arc::new(ConnectorMetrics::default());
        let mut sink = ConsoleSinkConfig
            .open(
                schema,
                SinkContext {
                    metrics: Arc::clone(&metrics),
                    checkpoints: None,
                    name: "test".into(),
                    update_key: None,
                },
            )
            .await
            .unwrap();
        sink.write(batch.slice(0, 0)).await.unwrap();
        sink.write(batch).await.unwrap();
        sink.finish().await.unwrap();
        assert_eq!(metrics.records.load(Ordering::Relaxed), 2);
    }
}
