//! Exactly-once under crashes: `sluice run` with checkpoints, killed with SIGKILL at random
//! moments and restarted on the same data dir, must leave in its Parquet sinks exactly the
//! rows of one uninterrupted run, as a multiset. Also: a corrupted newest checkpoint is
//! skipped for the one before it, and a crash between a checkpoint's manifest and its sink
//! commit is completed by recovery.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A bounded pipeline: Nexmark bids, paced so that a run takes about ten seconds, into a
/// TUMBLE aggregation and a filter, each written to Parquet.
fn script(dir: &Path, paced: bool) -> PathBuf {
    let pace = if paced {
        ", rows_per_second = 100000"
    } else {
        ""
    };
    let out = dir.join("out");
    let sql = format!(
        "CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
         WITH (connector = 'nexmark', table = 'bid', events = 1000000, events_per_second = 10000{pace}, seed = 7);
         CREATE SINK per_auction WITH (connector = 'parquet', path = '{agg}', rollover_rows = 5000) AS
         SELECT auction % 100 AS a, window_start, window_end, count(*) AS bids, sum(price) AS total
         FROM TUMBLE(bids, date_time, INTERVAL '2' SECOND)
         GROUP BY auction % 100, window_start, window_end;
         CREATE SINK pricey WITH (connector = 'parquet', path = '{pricey}', rollover_rows = 3000) AS
         SELECT auction, bidder, price, date_time FROM bids WHERE price > 9000000;",
        agg = out.join("agg").display(),
        pricey = out.join("pricey").display(),
    );
    let path = dir.join("pipeline.sql");
    std::fs::write(&path, sql).unwrap();
    path
}

fn sluice_run(dir: &Path, script: &Path, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("run")
        .arg(script)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--checkpoint-interval", "300ms", "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Runs to the end; returns stderr.
fn run_to_end(dir: &Path, script: &Path) -> String {
    let out = sluice_run(dir, script, &[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "sluice run failed: {stderr}");
    stderr
}

/// Every row of every Parquet file under `dir`, formatted, sorted.
fn rows(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                for batch in reader {
                    format_rows(&batch.unwrap(), &mut out);
                }
            }
        }
    }
    out.sort();
    out
}

fn format_rows(batch: &RecordBatch, out: &mut Vec<String>) {
    let options = FormatOptions::default();
    let formatters: Vec<_> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
        .collect();
    for row in 0..batch.num_rows() {
        let cells: Vec<String> = formatters
            .iter()
            .map(|f| f.value(row).to_string())
            .collect();
        out.push(cells.join("|"));
    }
}

/// Files under `dir` that are staged but not committed.
fn staged(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".pending") {
                out.push(path);
            }
        }
    }
    out
}

/// The rows of one uninterrupted, unpaced run.
fn reference() -> (tempfile::TempDir, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path(), false);
    run_to_end(dir.path(), &script);
    let agg = rows(&dir.path().join("out/agg"));
    let pricey = rows(&dir.path().join("out/pricey"));
    assert!(
        agg.len() > 1000 && pricey.len() > 1000,
        "{} {}",
        agg.len(),
        pricey.len()
    );
    (dir, agg, pricey)
}

fn assert_same_output(dir: &Path, agg: &[String], pricey: &[String]) {
    let got_agg = rows(&dir.join("out/agg"));
    let got_pricey = rows(&dir.join("out/pricey"));
    assert_eq!(got_agg.len(), agg.len(), "aggregate rows");
    assert_eq!(got_agg, agg, "aggregate rows differ");
    assert_eq!(got_pricey.len(), pricey.len(), "filtered rows");
    assert_eq!(got_pricey, pricey, "filtered rows differ");
    assert!(staged(&dir.join("out")).is_empty(), "staged files left");
}

/// The newest checkpoint manifests of a pipeline, newest first.
fn manifests(dir: &Path, pipeline: &str) -> Vec<PathBuf> {
    let folder = dir.join("data/checkpoints").join(pipeline);
    let mut m: Vec<PathBuf> = std::fs::read_dir(&folder)
        .map(|e| {
            e.map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(".manifest.json"))
                .collect()
        })
        .unwrap_or_default();
    m.sort();
    m.reverse();
    m
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let (_ref_dir, agg, pricey) = reference();
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path(), true);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut kills = 0;
    let mut finished = false;
    while kills < 12 {
        let mut child = sluice_run(dir.path(), &script, &[]);
        // xorshift: a kill between 150 ms and 1 s after the start.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait = Duration::from_millis(150 + seed % 850);
        let started = Instant::now();
        while started.elapsed() < wait {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if finished {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    assert!(
        kills >= 10,
        "the pipeline finished after only {kills} kills"
    );
    if !finished {
        run_to_end(dir.path(), &script);
    }
    eprintln!(
        "{kills} kills; compared {} aggregate and {} filtered rows",
        agg.len(),
        pricey.len()
    );
    assert_same_output(dir.path(), &agg, &pricey);
}

#[test]
fn a_corrupted_newest_checkpoint_falls_back_to_the_one_before() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let (_ref_dir, agg, pricey) = reference();
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path(), true);
    let mut child = sluice_run(dir.path(), &script, &[]);
    std::thread::sleep(Duration::from_millis(2500));
    child.kill().unwrap();
    child.wait().unwrap();
    // Damage the newest checkpoint of each pipeline: the aggregate's state file, and the
    // filter's manifest (it has no state file).
    let agg_manifest = manifests(dir.path(), "per_auction");
    assert!(agg_manifest.len() >= 2, "{agg_manifest:?}");
    let state = agg_manifest[0]
        .to_string_lossy()
        .replace(".manifest.json", ".operator-1-1.arrow");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&state, bytes).unwrap();
    let pricey_manifest = manifests(dir.path(), "pricey");
    let text = std::fs::read_to_string(&pricey_manifest[0]).unwrap();
    std::fs::write(
        &pricey_manifest[0],
        text.replacen("\"event\": ", "\"event\": 1", 1),
    )
    .unwrap();

    let stderr = run_to_end(dir.path(), &script);
    assert!(
        stderr.contains("fails its checksum") && stderr.contains("checksum mismatch"),
        "recovery did not report the damaged checkpoints: {stderr}"
    );
    assert_same_output(dir.path(), &agg, &pricey);
}

#[test]
fn a_crash_between_manifest_and_commit_is_completed_by_recovery() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let (_ref_dir, agg, pricey) = reference();
    let dir = tempfile::tempdir().unwrap();
    let script = script(dir.path(), true);
    let out = sluice_run(
        dir.path(),
        &script,
        &[("SLUICE_TEST_ABORT_BEFORE_COMMIT", "4")],
    )
    .wait_with_output()
    .unwrap();
    assert!(!out.status.success(), "the process should have aborted");
    // Checkpoint 4 is complete, but its output is still staged.
    assert!(
        !staged(&dir.path().join("out")).is_empty(),
        "nothing was staged when the process died"
    );
    run_to_end(dir.path(), &script);
    assert_same_output(dir.path(), &agg, &pricey);
}
