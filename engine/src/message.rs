//! What flows along the edges of a running pipeline: batches, watermarks, checkpoint
//! barriers, and the end.

use datafusion::arrow::record_batch::RecordBatch;

/// A watermark in nanoseconds since the Unix epoch.
pub type Watermark = i64;

/// The watermark before any row: nothing is complete yet.
pub const WATERMARK_MIN: Watermark = i64::MIN;
/// The watermark at the end of a bounded input: every window is complete.
pub const WATERMARK_END: Watermark = i64::MAX;

/// One message on a pipeline edge.
#[derive(Debug, Clone)]
pub enum Message {
    /// Rows.
    Batch(RecordBatch),
    /// No row with event time at or before this will follow (late rows aside).
    Watermark(Watermark),
    /// Checkpoint barrier: everything before it belongs to the checkpoint, everything after
    /// to the next. An operator snapshots its state once the barrier came on every input.
    Barrier(Barrier),
    /// The upstream finished; nothing follows.
    End,
}

/// A checkpoint barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint's number, increasing.
    pub id: u64,
    /// The last checkpoint of the pipeline (its input ended or it was stopped): the end of
    /// the stream follows.
    pub last: bool,
}
