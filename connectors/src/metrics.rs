//! Counters a connector keeps and the engine reads: records, bytes, bad records, lag.

use std::sync::atomic::AtomicU64;

/// Counters of one source or sink instance, shared with the engine's progress and metrics.
#[derive(Debug, Default)]
pub struct ConnectorMetrics {
    /// Records read or written.
    pub records: AtomicU64,
    /// Bytes read or written, where the connector knows them.
    pub bytes: AtomicU64,
    /// Records skipped because they did not parse or fit the schema.
    pub bad_records: AtomicU64,
    /// Records in the input not read yet (Kafka: high watermark minus position), where the
    /// connector knows it.
    pub lag: AtomicU64,
}
