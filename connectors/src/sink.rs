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

    /// First phase of a checkpoint's two-phase commit: everything written before the
    /// checkpoint's barrier is made durable but not visible, and described in the returned
    /// [`Precommit`]. Once the checkpoint is complete, [`SinkConfig::commit`] makes it
    /// visible. A sink that cannot stage its output (at-least-once) returns nothing.
    ///
    /// # Errors
    /// When the destination fails.
    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Precommit> {
        Ok(Precommit::default())
    }

    /// When the sink has work due even if no batch arrives (a Parquet file reaching
    /// `rollover_seconds` on a quiet stream): the engine then calls [`Sink::on_timer`].
    fn next_timer(&self) -> Option<std::time::Instant> {
        None
    }

    /// The time [`Sink::next_timer`] named has come.
    ///
    /// # Errors
    /// When the destination fails.
    async fn on_timer(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a sink hands a checkpoint.
#[derive(Debug, Default, Clone)]
pub struct Precommit {
    /// The staged output to make visible when the checkpoint is complete.
    pub pending: Option<serde_json::Value>,
    /// State to restore the sink with (rows of an engine-owned view).
    pub state: Vec<RecordBatch>,
    /// The staged output belongs to this checkpoint alone: if the checkpoint cannot be
    /// stored, the pipeline fails (and restarts from the last complete one) instead of
    /// carrying the output over to the next checkpoint. A Kafka transaction is pinned: its
    /// commit marker names the checkpoint.
    pub pinned: bool,
}

/// What [`SinkConfig::commit`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// The staged output is visible: committed now, or already before.
    Visible,
    /// The staged output can no longer be made visible: a Kafka transaction whose producer
    /// died with the process before the commit, which a new producer can only abort. Only
    /// recovery sees this; it then resumes from the checkpoint before, so that the rows
    /// are written again.
    Lost,
}

/// The checkpoints of a sink's run, when checkpoints are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCheckpoints {
    /// The checkpoint the run resumed from, if any.
    pub restored: Option<u64>,
    /// The id of the first checkpoint the run takes. Ids only grow: every checkpoint of
    /// an earlier run, complete or not, has a smaller one.
    pub next: u64,
    /// The time between checkpoints: how long staged output waits for its commit.
    pub interval: std::time::Duration,
}

/// What a running sink gets from the engine.
#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// The sink's name in the catalog.
    pub name: String,
    /// Counters the engine reports.
    pub metrics: Arc<ConnectorMetrics>,
    /// When checkpoints are on, they commit the output: files are staged until
    /// [`SinkConfig::commit`] instead of becoming visible as soon as they are complete.
    pub checkpoints: Option<RunCheckpoints>,
    /// For an updating query (a `GROUP BY` without a window), what identifies a row: its
    /// group keys. A sink that upserts must key on exactly these. `None` for an append-only
    /// query.
    pub update_key: Option<UpdateKey>,
}

impl SinkContext {
    /// Whether checkpoints commit the output (two-phase commit).
    pub fn two_phase(&self) -> bool {
        self.checkpoints.is_some()
    }
}

/// What identifies a row of an updating query's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKey {
    /// The group keys, at these columns of the sink's input.
    Columns(Vec<usize>),
    /// Some group key does not reach the output as a column of its own.
    NotInOutput,
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
    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>>;

    /// Second phase of a checkpoint's two-phase commit: makes the output a
    /// [`Sink::pre_commit`] staged for `checkpoint` visible. Idempotent: recovery calls it
    /// again for the last complete checkpoint, whose commit may or may not have happened,
    /// and learns from [`Committed::Lost`] that it must resume from an earlier one.
    ///
    /// # Errors
    /// When the destination fails, or staged output is missing.
    async fn commit(&self, _checkpoint: u64, _pending: &serde_json::Value) -> Result<Committed> {
        Ok(Committed::Visible)
    }

    /// Called before sink `sink`'s pipeline starts from checkpoint `restored` (or from
    /// nothing): removes its staged output no complete checkpoint covers, and its output
    /// committed by checkpoints after `restored`, which the restarted pipeline writes again.
    ///
    /// # Errors
    /// When the destination cannot be listed or cleaned.
    async fn recover(&self, _sink: &str, _restored: Option<u64>) -> Result<()> {
        Ok(())
    }
}
