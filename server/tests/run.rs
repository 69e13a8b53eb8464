//! `sluice run` as a user meets it: exit codes and messages for bad SQL, a failing pipeline
//! beside one that never ends, and command-line values at their edges (DESIGN.md §5).

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `sluice run` on `script` (written into `dir`) with `extra` arguments, giving up
/// after `limit`: a run that hangs fails the test instead of the suite.
fn run(dir: &Path, script: &str, extra: &[&str], limit: Duration) -> Output {
    let path = dir.join("job.sql");
    std::fs::write(&path, script).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .args(["run", path.to_str().unwrap(), "--quiet"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sluice run still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn bad_sql_exits_non_zero_naming_the_statement_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        "CREATE SOURCE g (id BIGINT) WITH (connector = 'generator', rows = 10);\n\
         SELECT count(* FROM g;",
        &[],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "bad SQL exited 0: {stderr}");
    assert!(stderr.contains("statement 2 (line 2)"), "{stderr}");
}

/// Regression: `sluice run` waited for its pipelines one after another, so a pipeline that
/// failed went unnoticed while an earlier, unbounded one ran on.
#[test]
fn a_failing_pipeline_ends_the_run_while_another_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.csv"), "id\n1\nnot-a-number\n3\n").unwrap();
    let out = run(
        dir.path(),
        "CREATE SOURCE forever (id BIGINT) WITH (connector = 'generator', rows_per_second = 100);
         CREATE SINK quiet WITH (connector = 'file', path = 'out/forever', format = 'csv') AS
             SELECT id FROM forever;
         CREATE SOURCE strict (id BIGINT)
             WITH (connector = 'file', path = 'bad.csv', format = 'csv', on_error = 'fail');
         CREATE SINK strict_out WITH (connector = 'file', path = 'out/strict', format = 'csv') AS
             SELECT id FROM strict;",
        &[],
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the run ended with 0: {stderr}");
    assert!(
        stderr.contains("bad.csv:3"),
        "the error names the record: {stderr}"
    );
}

/// Regression: `--checkpoint-interval 0s` panicked inside tokio; like `serve`'s, it means
/// no checkpoints.
#[test]
fn a_zero_checkpoint_interval_turns_checkpoints_off() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        dir.path(),
        "CREATE SOURCE g (id BIGINT) WITH (connector = 'generator', rows = 1000);
         CREATE SINK s WITH (connector = 'file', path = 'out/g', format = 'csv') AS SELECT id FROM g;",
        &["--checkpoint-interval", "0s", "--data-dir", "data"],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("data/checkpoints").exists(),
        "checkpoints were written"
    );
}

/// Regression: without checkpoints, a Parquet file on a quiet stream waited for the next
/// row before `rollover_seconds` was looked at, so it never became visible.
#[test]
fn rollover_seconds_finishes_a_file_on_a_quiet_stream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("in")).unwrap();
    std::fs::write(dir.path().join("in/a.csv"), "id\n1\n2\n3\n").unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        "CREATE SOURCE watched (id BIGINT)
             WITH (connector = 'file', path = 'in', format = 'csv', follow = true);
         CREATE SINK files WITH (connector = 'parquet', path = 'out', rollover_seconds = 1) AS
             SELECT id FROM watched;",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir.path())
        .args(["run", script.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let finished = |dir: &Path| {
        std::fs::read_dir(dir.join("out")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !finished(dir.path()) && Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "sluice run ended");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        finished(dir.path()),
        "no finished .parquet file 20 s after the rows, with rollover_seconds = 1"
    );
}

#[test]
fn dead_letter_keeps_each_bad_record_as_it_came() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.csv"),
        "id,amount\n1,10\n2,twenty\n3,5\n4\n5,3\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        "CREATE SOURCE payments (id BIGINT, amount BIGINT)
             WITH (connector = 'file', path = 'in.csv', format = 'csv',
                   on_error = 'dead_letter', dead_letter_path = 'dead/payments.txt');
         CREATE SINK good WITH (connector = 'file', path = 'out', format = 'csv') AS
             SELECT id, amount FROM payments;",
        &[],
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dead = std::fs::read_to_string(dir.path().join("dead/payments.txt")).unwrap();
    assert_eq!(dead, "2,twenty\n4\n");
    let mut good = String::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "csv") {
            good.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    let mut rows: Vec<&str> = good.lines().filter(|l| !l.starts_with("id")).collect();
    rows.sort_unstable();
    assert_eq!(rows, ["1,10", "3,5", "5,3"]);
}

/// Regression: a GROUP BY over a unique key on an unbounded generator grew by megabytes a
/// second with no limit. With one, the pipeline fails with an error that says why.
#[test]
fn a_pipeline_past_its_state_memory_limit_fails_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let growing = "CREATE SOURCE g (id BIGINT, s VARCHAR) WITH (connector = 'generator', 'fields.id.kind' = 'sequence', batch_size = 4096);";
    for (view, flags) in [
        (
            "CREATE MATERIALIZED VIEW per_id AS SELECT id, count(*) AS n, max(s) AS s FROM g GROUP BY id;",
            vec!["--max-state-mib", "8"],
        ),
        (
            "CREATE MATERIALIZED VIEW per_id WITH (max_state_mib = 8) AS SELECT id, count(*) AS n, max(s) AS s FROM g GROUP BY id;",
            vec![],
        ),
    ] {
        let started = Instant::now();
        let out = run(
            dir.path(),
            &format!("{growing}\n{view}"),
            &flags,
            Duration::from_secs(120),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("over its limit of 8 MiB"),
            "{flags:?}: {stderr}"
        );
        println!("{flags:?}: failed after {:?}", started.elapsed());
    }
}
