//! Counters a connector keeps and the engine reads: records, bytes, bad records, errors of
//! the external service, lag.

use std::sync::atomic::{AtomicU64, Ordering};

/// The lag before a connector knows it.
const LAG_UNKNOWN: u64 = u64::MAX;

/// Counters of one source or sink instance, shared with the engine's progress and metrics.
#[derive(Debug)]
pub struct ConnectorMetrics {
    /// Records read or written.
    pub records: AtomicU64,
    /// Bytes read or written, where the connector knows them.
    pub bytes: AtomicU64,
    /// Records skipped because they did not parse or fit the schema.
    pub bad_records: AtomicU64,
    /// Errors of the external service that the connector met and retried: a broker or
    /// database gone, a write refused.
    pub errors: AtomicU64,
    /// Records in the input not read yet (Kafka: high watermark minus position), where the
    /// connector knows it; see [`ConnectorMetrics::lag`].
    lag: AtomicU64,
}

impl Default for ConnectorMetrics {
    fn default() -> Self {
        Self {
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            bad_records: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lag: AtomicU64::new(LAG_UNKNOWN),
        }
    }
}

impl ConnectorMetrics {
    /// Records in the input not read yet, once the connector has said.
    pub fn lag(&self) -> Option<u64> {
        Some(self.lag.load(Ordering::Relaxed)).filter(|l| *l != LAG_UNKNOWN)
    }

    /// Counts one error of the external service.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the lag.
    pub fn set_lag(&self, lag: u64) {
        self.lag.store(lag.min(LAG_UNKNOWN - 1), Ordering::Relaxed);
    }
}
