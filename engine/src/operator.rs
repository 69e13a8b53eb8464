//! The operator contract: small lifecycle hooks. The runtime owns the loop, the channels,
//! watermark alignment across inputs and the metrics; an operator only reacts.

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::message::Watermark;

/// Where an operator puts the batches it emits.
#[derive(Debug, Default)]
pub struct Output {
    batches: Vec<RecordBatch>,
}

impl Output {
    /// Emits a batch; empty batches are dropped.
    pub fn emit(&mut self, batch: RecordBatch) {
        if batch.num_rows() > 0 {
            self.batches.push(batch);
        }
    }

    /// Takes what was emitted so far.
    pub fn drain(&mut self) -> std::vec::Drain<'_, RecordBatch> {
        self.batches.drain(..)
    }
}

/// A streaming operator.
pub trait Operator: Send {
    /// A short name for plans, logs and metrics.
    fn name(&self) -> &'static str;

    /// Handles a batch of rows from input `input`.
    ///
    /// # Errors
    /// When an expression or accumulator fails on the batch.
    fn process_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Output) -> Result<()>;

    /// Handles the combined watermark of all inputs, which only moves forward. Stateful
    /// operators emit what it completes.
    ///
    /// # Errors
    /// When emitting results fails.
    fn process_watermark(&mut self, _watermark: Watermark, _out: &mut Output) -> Result<()> {
        Ok(())
    }

    /// The memory its state holds now, in bytes (approximate): what the pipeline's state
    /// memory limit counts. Stateless operators hold none.
    fn state_bytes(&self) -> usize {
        0
    }

    /// The operator's state for a checkpoint, as one batch in a schema of its choosing, or
    /// `None` when it holds none. Called when a barrier has arrived on every input; the
    /// runtime writes the batch asynchronously, so it must not share mutable state with the
    /// operator.
    ///
    /// # Errors
    /// When the state cannot be encoded.
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }

    /// Loads state from [`Operator::snapshot`] before the first batch after a restart.
    ///
    /// # Errors
    /// When the batch is not this operator's state.
    fn restore(&mut self, _state: RecordBatch) -> Result<()> {
        Err(crate::error::Error::Internal(format!(
            "operator '{}' keeps no state but a checkpoint holds some for it",
            self.name()
        )))
    }
}
