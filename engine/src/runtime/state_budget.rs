//! The state memory budget of a pipeline: every chain task reports what its operators'
//! state holds after each batch and watermark into one counter per pipeline (reported as
//! `state_bytes`), and fails the pipeline with a clear error once the total passes the
//! limit, instead of growing until the process is killed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::operator::Operator;

/// One chain task's share of its pipeline's state budget.
#[derive(Debug)]
pub(crate) struct StateBudget {
    /// The pipeline's total, shared by its tasks.
    total: Arc<AtomicU64>,
    /// The most the total may be, in bytes; `None`: no limit, only counted.
    limit: Option<u64>,
    /// What this task added to the total at its last report.
    reported: u64,
}

impl StateBudget {
    pub(crate) fn new(total: Arc<AtomicU64>, limit: Option<u64>) -> Self {
        Self {
            total,
            limit,
            reported: 0,
        }
    }

    /// Reports what `ops` hold now.
    ///
    /// # Errors
    /// When the pipeline's state passes its limit.
    pub(crate) fn account(&mut self, ops: &[Box<dyn Operator>]) -> Result<()> {
        let now: u64 = ops.iter().map(|o| o.state_bytes() as u64).sum();
        let total = if now >= self.reported {
            self.total.fetch_add(now - self.reported, Ordering::Relaxed) + (now - self.reported)
        } else {
            self.total.fetch_sub(self.reported - now, Ordering::Relaxed) - (self.reported - now)
        };
        self.reported = now;
        match self.limit {
            Some(limit) if total > limit => Err(Error::StateLimit(format!(
                "the pipeline's state holds {} MiB, over its limit of {} MiB (--max-state-mib, or WITH (max_state_mib = ...)): a GROUP BY over a key without bound, or windows that never close? A window or a key with fewer values keeps it small",
                total >> 20,
                limit >> 20
            ))),
            _ => Ok(()),
        }
    }
}

impl Drop for StateBudget {
    /// A task that ends gives its share back.
    fn drop(&mut self) {
        self.total.fetch_sub(self.reported, Ordering::Relaxed);
    }
}
