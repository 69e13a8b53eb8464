//! The source side: what a connector must provide to feed rows into a pipeline.
//!
//! A [`SourceConfig`] is the validated result of a `CREATE SOURCE ... WITH (...)`: it knows
//! the output schema before anything runs. [`SourceConfig::open`] makes a running
//! [`Source`], which hands out Arrow batches until its input ends.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::bad_records::BadRecords;
use crate::error::Result;
use crate::metrics::ConnectorMetrics;

/// Default rows per batch (DESIGN.md §3).
pub const DEFAULT_BATCH_SIZE: usize = 8192;
/// Default time a source waits to fill a batch before cutting it (DESIGN.md §3).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(100);

/// What a running source gets from the engine.
#[derive(Debug, Clone)]
pub struct SourceContext {
    /// The source's name in the catalog.
    pub name: String,
    /// Which reading of the source this is, stable across restarts and unique in the
    /// process: `<pipeline>-<source>`, with the task's index added when one pipeline reads
    /// the source twice. Every pipeline opens a source anew, so a service-side cursor (a
    /// JetStream consumer) named after it is never shared between two readings.
    pub reader: String,
    /// Cut a batch at this many rows.
    pub batch_size: usize,
    /// Cut a batch after this long, if rows arrive slower than `batch_size` fills.
    pub linger: Duration,
    /// Counters the engine reports.
    pub metrics: Arc<ConnectorMetrics>,
    /// Where bad records go.
    pub bad_records: Arc<BadRecords>,
    /// A position from [`Source::position`] saved by a checkpoint: the source resumes right
    /// after it instead of from the beginning.
    pub resume: Option<serde_json::Value>,
    /// Whether the pipeline checkpoints: a source that acknowledges its input waits for
    /// [`Source::checkpoint_complete`] instead of acknowledging as it reads.
    pub checkpointing: bool,
}

/// A running source: a stream of batches in the config's schema.
#[async_trait::async_trait]
pub trait Source: Send {
    /// The next batch, or `None` once a bounded input is exhausted.
    ///
    /// Must be cancel-safe: when the future is dropped before it completes (a stop, a
    /// checkpoint barrier), no record may be lost, and [`Source::position`] must still
    /// describe the last batch returned.
    ///
    /// # Errors
    /// When the input fails, or a record is bad and `on_error = 'fail'`.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// Where the source stands right after the last batch it returned, for a checkpoint.
    /// Given back as [`SourceContext::resume`], it makes the source continue with the row
    /// after that batch. `None` means the source cannot resume and starts over.
    fn position(&self) -> Option<serde_json::Value> {
        None
    }

    /// Checkpoint `checkpoint`'s barrier goes out now, right after the last batch returned
    /// (called just before [`Source::position`]).
    fn on_barrier(&mut self, _checkpoint: u64) {}

    /// Checkpoint `checkpoint` is complete (its manifest is written): a source that
    /// acknowledges its input (NATS JetStream) does so for everything before that barrier.
    ///
    /// # Errors
    /// When the acknowledgement cannot be sent.
    async fn checkpoint_complete(&mut self, _checkpoint: u64) -> Result<()> {
        Ok(())
    }

    /// For a source reading several independently ordered splits (Kafka partitions): the
    /// split the last batch came from. The engine then keeps a watermark per split and
    /// takes the minimum over the splits that are not idle.
    fn split(&self) -> Option<Split> {
        None
    }

    /// Whether split `index` has input waiting that the source has not returned yet (Kafka:
    /// a partition below its high watermark). Such a split is behind, not idle: it keeps
    /// holding the watermark back however long the others keep the source busy.
    fn split_has_backlog(&self, _index: usize) -> bool {
        false
    }
}

/// One of several independently ordered parts of a source's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Which split, from 0.
    pub index: usize,
    /// How many splits the source reads.
    pub count: usize,
}

/// A validated source declaration.
#[async_trait::async_trait]
pub trait SourceConfig: Send + Sync + Debug {
    /// The schema of every batch the source produces.
    fn schema(&self) -> SchemaRef;
    /// Whether the input ends by itself (a file, a generator with `rows`).
    fn is_bounded(&self) -> bool;
    /// The most bytes one row takes in a batch, where the source knows it (a generator):
    /// with `batch_size`, what bounds a batch's memory at CREATE time.
    fn max_row_bytes(&self) -> Option<u64> {
        None
    }
    /// Starts reading.
    ///
    /// # Errors
    /// When the input cannot be opened.
    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>>;
}
