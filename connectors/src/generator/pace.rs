//! Wall-clock pacing for the generating sources (`generator`, `nexmark`) under
//! `rows_per_second`: how many rows the next batch may hold, and when it is due.
//!
//! Row `k` (counted from the first batch) is due `k / rate` seconds after the first batch was
//! asked for; a batch is handed out when its last row is due. At a low rate a batch is cut at
//! `linger` worth of rows, so that batches still come at least every `linger`.

use std::time::Duration;

use tokio::time::Instant;

/// Paces batches at a fixed number of rows per second, or not at all.
#[derive(Debug)]
pub(crate) struct Pacer {
    /// Rows per second; `None` runs as fast as possible.
    rate: Option<u64>,
    /// When the first batch was asked for.
    start: Option<Instant>,
    /// Rows handed out so far.
    emitted: u64,
}

impl Pacer {
    /// A pacer for `rows_per_second` (`None` or 0: no pacing).
    pub(crate) fn new(rows_per_second: Option<u64>) -> Self {
        Self {
            rate: rows_per_second.filter(|r| *r > 0),
            start: None,
            emitted: 0,
        }
    }

    /// How many rows the next batch may hold: `batch_size`, or fewer when the rate is so low
    /// that `batch_size` rows would take longer than `linger` (at least one row).
    pub(crate) fn batch_rows(&self, batch_size: usize, linger: Duration) -> usize {
        let batch_size = batch_size.max(1);
        match self.rate {
            None => batch_size,
            Some(rate) => {
                // `as` from f64 saturates, so a huge rate simply gives `batch_size`.
                let per_linger = (rate as f64 * linger.as_secs_f64()).floor() as usize;
                per_linger.clamp(1, batch_size)
            }
        }
    }

    /// Waits until a batch of `rows` more rows is due. Returns at once without a rate, or
    /// when the source has fallen behind.
    ///
    /// Cancel-safe: the rows count as handed out only once the wait is over, so a caller
    /// that gives up on the wait (a stop, a checkpoint barrier) and asks again for the same
    /// rows is not made to wait for them twice.
    pub(crate) async fn pace(&mut self, rows: usize) {
        let Some(rate) = self.rate else { return };
        let start = *self.start.get_or_insert_with(Instant::now);
        let last_row = self.emitted.saturating_add(rows as u64).saturating_sub(1);
        if let Ok(offset) = Duration::try_from_secs_f64(last_row as f64 / rate as f64)
            && let Some(due) = start.checked_add(offset)
        {
            tokio::time::sleep_until(due).await;
        }
        self.emitted = self.emitted.saturating_add(rows as u64);
    }
}

/// A [`SourceContext`](crate::source::SourceContext) for the generators' unit tests.
#[cfg(test)]
pub(crate) fn test_context(batch_size: usize) -> crate::source::SourceContext {
    use std::sync::Arc;

    use crate::bad_records::{BadRecords, OnError};
    use crate::metrics::ConnectorMetrics;

    let metrics = Arc::new(ConnectorMetrics::default());
    crate::source::SourceContext {
        batch_size,
        linger: crate::source::DEFAULT_LINGER,
        bad_records: Arc::new(BadRecords::new(OnError::Skip, Arc::clone(&metrics))),
        metrics,
        resume: None,
        checkpointing: false,
        name: "test".into(),
        reader: "test".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_follow_rate_and_linger() {
        let linger = Duration::from_millis(100);
        assert_eq!(Pacer::new(None).batch_rows(8192, linger), 8192);
        assert_eq!(Pacer::new(Some(1_000)).batch_rows(8192, linger), 100);
        assert_eq!(Pacer::new(Some(5)).batch_rows(8192, linger), 1);
        assert_eq!(Pacer::new(Some(10_000_000)).batch_rows(8192, linger), 8192);
    }

    #[tokio::test]
    async fn pace_waits_for_the_rate() {
        let mut pacer = Pacer::new(Some(100));
        let started = std::time::Instant::now();
        for _ in 0..3 {
            pacer.pace(10).await;
        }
        // rows 0..30 at 100 rows/s: the last (row 29) is due 0.29 s after the start.
        assert!(
            started.elapsed() >= Duration::from_millis(280),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_interrupted_wait_is_not_paid_twice() {
        // A source's batch is interrupted by checkpoint barriers again and again; the rows it
        // finally hands out must still come at the rate, not later with every interruption.
        let mut pacer = Pacer::new(Some(100));
        let started = std::time::Instant::now();
        for _ in 0..5 {
            let _ = tokio::time::timeout(Duration::from_millis(20), pacer.pace(10)).await;
        }
        pacer.pace(10).await;
        // Rows 0..10 are due at 0.09 s whatever the interruptions.
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
    }
}
