//! `GET /metrics` on the HTTP port: every pipeline's counters in the Prometheus text format
//! (version 0.0.4), one series per pipeline, labelled `pipeline="<name>"`.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_engine::{MetricsSnapshot, Pipeline, PipelineStatus, Session};
use tokio::sync::Mutex;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric: its name, type, help, and its value for a pipeline given the snapshot of its
/// counters (none: no sample).
struct Metric {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Pipeline, &MetricsSnapshot) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "sluice_pipeline_running",
        kind: "gauge",
        help: "1 while the pipeline runs, 0 once it finished, stopped or failed.",
        value: |p, _| Some(f64::from(u8::from(p.status() == PipelineStatus::Running))),
    },
    Metric {
        name: "sluice_rows_in_total",
        kind: "counter",
        help: "Rows the pipeline's sources read.",
        value: |_, m| Some(m.rows_in as f64),
    },
    Metric {
        name: "sluice_bytes_in_total",
        kind: "counter",
        help: "Bytes the pipeline's sources read, where they know it.",
        value: |_, m| Some(m.bytes_in as f64),
    },
    Metric {
        name: "sluice_rows_out_total",
        kind: "counter",
        help: "Rows the pipeline handed to its sink or view.",
        value: |_, m| Some(m.rows_out as f64),
    },
    Metric {
        name: "sluice_bad_records_total",
        kind: "counter",
        help: "Records skipped because they did not parse or fit the schema.",
        value: |_, m| Some(m.bad_records as f64),
    },
    Metric {
        name: "sluice_connector_errors_total",
        kind: "counter",
        help: "Errors of external services (a broker or database gone, a write refused) that the pipeline's connectors met and retried.",
        value: |_, m| Some(m.connector_errors as f64),
    },
    Metric {
        name: "sluice_late_rows_dropped_total",
        kind: "counter",
        help: "Rows dropped because every window they belong to was already emitted.",
        value: |_, m| Some(m.late_rows_dropped as f64),
    },
    Metric {
        name: "sluice_state_bytes",
        kind: "gauge",
        help: "Memory the pipeline's operator state holds (aggregates, open windows, sessions), bytes.",
        value: |_, m| Some(m.state_bytes as f64),
    },
    Metric {
        name: "sluice_source_lag_records",
        kind: "gauge",
        help: "Records in the sources' input not read yet (Kafka: high watermark minus position).",
        value: |_, m| m.source_lag.map(|l| l as f64),
    },
    Metric {
        name: "sluice_watermark_seconds",
        kind: "gauge",
        help: "The pipeline's watermark, seconds since the Unix epoch.",
        value: |_, m| {
            let w = m.watermark;
            (w != i64::MIN && w != i64::MAX).then(|| w as f64 / 1e9)
        },
    },
    Metric {
        name: "sluice_checkpoints_completed_total",
        kind: "counter",
        help: "Checkpoints completed since the pipeline started.",
        value: |p, _| {
            p.checkpoints
                .as_ref()
                .map(|c| c.completed.load(Ordering::Relaxed) as f64)
        },
    },
    Metric {
        name: "sluice_checkpoints_failed_total",
        kind: "counter",
        help: "Checkpoints that could not be written.",
        value: |p, _| {
            p.checkpoints
                .as_ref()
                .map(|c| c.failed.load(Ordering::Relaxed) as f64)
        },
    },
];

/// A label value with `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The text of every metric of every pipeline.
pub fn render(pipelines: &[Pipeline]) -> String {
    // One snapshot per pipeline, so that every metric of a scrape reads the same moment.
    let snapshots: Vec<MetricsSnapshot> = pipelines.iter().map(|p| p.metrics.snapshot()).collect();
    let mut out = String::new();
    for metric in METRICS {
        let _ = writeln!(out, "# HELP {} {}", metric.name, metric.help);
        let _ = writeln!(out, "# TYPE {} {}", metric.name, metric.kind);
        for (p, m) in pipelines.iter().zip(&snapshots) {
            if let Some(v) = (metric.value)(p, m) {
                let _ = writeln!(
                    out,
                    "{}{{pipeline=\"{}\"}} {v}",
                    metric.name,
                    escape(&p.name)
                );
            }
        }
    }
    out
}

/// The `/metrics` handler.
pub async fn handler(session: Arc<Mutex<Session>>) -> impl axum::response::IntoResponse {
    let session = session.lock().await;
    (
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        render(session.pipelines()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
