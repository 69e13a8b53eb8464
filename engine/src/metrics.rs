//! Counters of a running pipeline: rows and bytes in, rows out, the watermark, late and bad
//! rows, and how far its sources lag behind their input.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sluice_connectors::ConnectorMetrics;

use crate::message::WATERMARK_MIN;

/// Live counters of one pipeline, read by progress displays and tests.
#[derive(Debug)]
pub struct PipelineMetrics {
    /// Rows read by the sources.
    pub rows_in: AtomicU64,
    /// Rows handed to the sink.
    pub rows_out: AtomicU64,
    /// Rows dropped because all their windows had been emitted (`late_rows_dropped`).
    pub late_rows_dropped: Arc<AtomicU64>,
    /// Rows the operators dropped as bad records (windows outside the timestamp range),
    /// counted in `bad_records` with the sources' bad records.
    pub bad_rows: Arc<AtomicU64>,
    /// The memory the operators' state holds, in bytes, summed over the pipeline's tasks.
    pub state_bytes: Arc<AtomicU64>,
    /// The watermark at the sink side of the sources (nanoseconds).
    pub watermark: AtomicI64,
    /// The sources' connector counters (`bad_records` among them).
    pub sources: std::sync::Mutex<Vec<Arc<ConnectorMetrics>>>,
    /// The sink connector's counters, for a pipeline that writes to one.
    pub sink: std::sync::Mutex<Option<Arc<ConnectorMetrics>>>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self {
            rows_in: AtomicU64::new(0),
            rows_out: AtomicU64::new(0),
            late_rows_dropped: Arc::new(AtomicU64::new(0)),
            bad_rows: Arc::new(AtomicU64::new(0)),
            state_bytes: Arc::new(AtomicU64::new(0)),
            watermark: AtomicI64::new(WATERMARK_MIN),
            sources: std::sync::Mutex::new(Vec::new()),
            sink: std::sync::Mutex::new(None),
        }
    }
}

/// A point-in-time copy of [`PipelineMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Late rows dropped.
    pub late_rows_dropped: u64,
    /// Bad records skipped.
    pub bad_records: u64,
    /// Bytes the sources read, where they know it.
    pub bytes_in: u64,
    /// Errors of external services the sources and the sink met and retried.
    pub connector_errors: u64,
    /// Records in the sources' input not read yet (Kafka), `None` where no source knows.
    pub source_lag: Option<u64>,
    /// The watermark, nanoseconds (i64::MIN before any).
    pub watermark: i64,
    /// The memory the operators' state holds, in bytes.
    pub state_bytes: u64,
}

impl PipelineMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (mut bad_records, mut bytes_in, mut source_lag) =
            (self.bad_rows.load(Ordering::Relaxed), 0, None);
        let mut connector_errors = 0;
        if let Ok(sources) = self.sources.lock() {
            for m in sources.iter() {
                bad_records += m.bad_records.load(Ordering::Relaxed);
                bytes_in += m.bytes.load(Ordering::Relaxed);
                connector_errors += m.errors.load(Ordering::Relaxed);
                if let Some(lag) = m.lag() {
                    *source_lag.get_or_insert(0) += lag;
                }
            }
        }
        if let Ok(sink) = self.sink.lock()
            && let Some(m) = sink.as_ref()
        {
            connector_errors += m.errors.load(Ordering::Relaxed);
        }
        MetricsSnapshot {
            connector_errors,
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            late_rows_dropped: self.late_rows_dropped.load(Ordering::Relaxed),
            bad_records,
            bytes_in,
            source_lag,
            watermark: self.watermark.load(Ordering::Relaxed),
            state_bytes: self.state_bytes.load(Ordering::Relaxed),
        }
    }
}
