//! Differential test: for a bounded input with disorder smaller than the watermark delay, a
//! windowed streaming query must give exactly what DataFusion's batch `GROUP BY` gives over
//! the same rows (DESIGN.md §3, "bounded runs are deterministic").

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sluice_engine::{Session, StatementOutput};
use std::sync::Arc;

const SOURCE: &str = "CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '3' SECOND
) WITH (connector = 'generator', rows = 20000, seed = 42, batch_size = 997,
    'fields.k.kind' = 'random', 'fields.k.start' = 1, 'fields.k.end' = 50,
    'fields.v.kind' = 'random', 'fields.v.start' = 1, 'fields.v.end' = 1000,
    'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 1, 'fields.ts.max_disorder_ms' = 2000)";

fn lines(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let f: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                f.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    out.sort();
    out
}

async fn stream(session: &mut Session, sql: &str) -> Vec<RecordBatch> {
    let mut outs = session.execute_script(sql).await.unwrap();
    let Some(StatementOutput::Stream { mut rows, .. }) = outs.pop() else {
        panic!("not a stream")
    };
    let mut batches = Vec::new();
    while let Some(b) = rows.recv().await {
        batches.push(b);
    }
    session.wait_bounded().await.unwrap();
    batches
}

async fn batch(rows: &[RecordBatch], sql: &str) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    let table = MemTable::try_new(rows[0].schema(), vec![rows.to_vec()]).unwrap();
    ctx.register_table("events", Arc::new(table)).unwrap();
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

async fn check(streaming: &str, reference: &str) {
    let mut session = Session::new();
    session.execute_script(SOURCE).await.unwrap();
    let rows = stream(&mut session, "SELECT * FROM events").await;
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 20000);
    let got = lines(&stream(&mut session, streaming).await);
    let want = lines(&batch(&rows, reference).await);
    assert!(
        want.len() > 100,
        "too few groups to compare: {}",
        want.len()
    );
    assert_eq!(got.len(), want.len(), "row counts differ");
    assert_eq!(got, want);
    let late: u64 = session
        .pipelines()
        .iter()
        .map(|p| p.metrics.snapshot().late_rows_dropped)
        .sum();
    assert_eq!(late, 0, "disorder below the delay must not make rows late");
}

#[tokio::test]
async fn tumble_equals_batch_group_by() {
    check(
        "SELECT k, window_start, window_end, count(*), sum(v), min(v), max(v), avg(v), count(DISTINCT v % 7)
         FROM TUMBLE(events, ts, INTERVAL '1' SECOND) GROUP BY k, window_start, window_end",
        "SELECT k, ws, ws + INTERVAL '1' SECOND, count(*), sum(v), min(v), max(v), avg(v), count(DISTINCT v % 7)
         FROM (SELECT *, date_bin(INTERVAL '1' SECOND, ts, TIMESTAMP '1970-01-01') AS ws FROM events) GROUP BY k, ws",
    )
    .await;
}

#[tokio::test]
async fn hop_equals_batch_group_by() {
    check(
        "SELECT k % 5, window_start, window_end, count(*), sum(v), max(v), count(DISTINCT k)
         FROM HOP(events, ts, INTERVAL '500' MILLISECOND, INTERVAL '2' SECOND) GROUP BY k % 5, window_start, window_end",
        "SELECT k % 5, ws, ws + INTERVAL '2' SECOND, count(*), sum(v), max(v), count(DISTINCT k)
         FROM (SELECT k, v, unnest(generate_series(
                  date_bin(INTERVAL '500' MILLISECOND, ts, TIMESTAMP '1970-01-01') - INTERVAL '1500' MILLISECOND,
                  date_bin(INTERVAL '500' MILLISECOND, ts, TIMESTAMP '1970-01-01'),
                  INTERVAL '500' MILLISECOND)) AS ws FROM events)
         GROUP BY k % 5, ws",
    )
    .await;
}

#[tokio::test]
async fn late_rows_are_counted() {
    let mut session = Session::new();
    session
        .execute_script(
            "CREATE SOURCE events (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
             WITH (connector = 'generator', rows = 5000, seed = 3, batch_size = 100,
                   'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 1, 'fields.ts.max_disorder_ms' = 3000)",
        )
        .await
        .unwrap();
    let out = stream(&mut session, "SELECT window_start, count(*) FROM TUMBLE(events, ts, INTERVAL '100' MILLISECOND) GROUP BY window_start").await;
    let emitted: i64 = lines(&out)
        .iter()
        .map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap())
        .sum();
    let late = session.pipelines()[0].metrics.snapshot().late_rows_dropped;
    assert!(late > 0, "disorder beyond the delay must produce late rows");
    assert_eq!(
        emitted as u64 + late,
        5000,
        "every row is either in a window or counted late"
    );
}
