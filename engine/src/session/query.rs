//! Limits of ad-hoc queries: DataFusion's memory pool for their operators, and a bound on
//! the rows they return, which are held in memory until the client has them. A query past
//! either fails with DataFusion's `ResourcesExhausted`, which clients see as
//! RESOURCE_EXHAUSTED.

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;

use crate::error::Result;

/// The memory an ad-hoc query may use unless `--query-memory` says otherwise: 512 MiB.
pub const DEFAULT_QUERY_MEMORY: usize = 512 << 20;

/// A DataFusion runtime whose memory pool holds `limit` bytes.
///
/// # Errors
/// When DataFusion cannot build the runtime.
pub fn runtime(limit: usize) -> Result<Arc<RuntimeEnv>> {
    Ok(RuntimeEnvBuilder::new()
        .with_memory_limit(limit, 1.0)
        .build_arc()?)
}

/// `stream`, failing once the batches it returned hold more than `limit` bytes.
pub fn bounded(stream: SendableRecordBatchStream, limit: usize) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let mut held = 0usize;
    let limited = stream.map(move |batch| {
        let batch = batch?;
        held = held.saturating_add(batch.get_array_memory_size());
        if held > limit {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the query's result passed its memory limit of {limit} bytes (--query-memory); add a WHERE or a LIMIT"
            )));
        }
        Ok(batch)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, limited))
}

/// Reads every batch of `stream`.
///
/// # Errors
/// The stream's first error.
pub async fn collect(
    mut stream: SendableRecordBatchStream,
) -> Result<Vec<datafusion::arrow::record_batch::RecordBatch>> {
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch?);
    }
    Ok(batches)
}
