//! The live progress line shown on a terminal during `sluice run`: rows in and out per
//! second, the watermark, and late and bad row counts. Quiet when output is piped.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::PipelineMetrics;

pub struct Progress {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(metrics: Vec<Arc<PipelineMetrics>>) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut last = (0u64, 0u64, Instant::now());
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopped.changed() => break,
                }
                let snaps: Vec<_> = metrics.iter().map(|m| m.snapshot()).collect();
                let rows_in: u64 = snaps.iter().map(|s| s.rows_in).sum();
                let rows_out: u64 = snaps.iter().map(|s| s.rows_out).sum();
                let late: u64 = snaps.iter().map(|s| s.late_rows_dropped).sum();
                let bad: u64 = snaps.iter().map(|s| s.bad_records).sum();
                let wm = snaps
                    .iter()
                    .map(|s| s.watermark)
                    .filter(|w| *w > i64::MIN)
                    .min();
                let secs = last.2.elapsed().as_secs_f64().max(1e-3);
                let in_rate = (rows_in - last.0) as f64 / secs;
                let out_rate = (rows_out - last.1) as f64 / secs;
                last = (rows_in, rows_out, Instant::now());
                let wm = match wm {
                    Some(i64::MAX) => "end".to_string(),
                    Some(w) => chrono_like(w),
                    None => "-".to_string(),
                };
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[2K{rows_in} rows in ({in_rate:.0}/s), {rows_out} out ({out_rate:.0}/s), watermark {wm}, late {late}, bad {bad}"
                );
                let _ = err.flush();
            }
        });
        Self { stop, task }
    }

    pub fn finish(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        eprint!("\r\x1b[2K");
    }
}

/// Formats nanoseconds since the epoch as an ISO-8601 UTC timestamp.
fn chrono_like(nanos: i64) -> String {
    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let arr = TimestampNanosecondArray::from(vec![nanos]);
    ArrayFormatter::try_new(&arr, &FormatOptions::default())
        .map(|f| f.value(0).to_string())
        .unwrap_or_else(|_| nanos.to_string())
}
