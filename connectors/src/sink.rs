//! The sink side: where a pipeline's result batches go.

use std::fmt::Debug;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::metrics::ConnectorMetrics;

/// A running sink.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Writes one batch. A sink may buffer it.
    ///
    /// # Errors
    /// When the destination fails.
    async fn write(&mut self, batch: RecordBatch) -> Result<()>;
    /// Flushes everything and makes it visible. Called once, at the end of the input
    /// or on a clean stop.
    ///
    /// # Errors
    /// When the destination fails.
    async fn finish(&mut self) -> Result<()>;
}

/// A validated sink declaration.
#[async_trait::async_trait]
pub trait SinkConfig: Send + Sync + Debug {
    /// Whether the sink can only append rows, so that an updating query must be
    /// rejected when it is created.
    fn append_only(&self) -> bool {
        true
    }
    /// Starts a sink for batches of `schema`.
    ///
    /// # Errors
    /// When the destination cannot be opened, or the schema cannot be written there.
    async fn open(
        &self,
        schema: SchemaRef,
        metrics: Arc<ConnectorMetrics>,
    ) -> Result<Box<dyn Sink>>;
}
