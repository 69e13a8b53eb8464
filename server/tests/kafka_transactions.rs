//! The `kafka` sink's exactly-once delivery against a real Kafka-protocol broker with
//! transactions: noida-db (PyPI, installed by scripts/test into the test virtualenv and
//! started here on a free loopback port), whose Kafka side answers InitProducerId,
//! AddPartitionsToTxn, TxnOffsetCommit and EndTxn, fences old producers and hides aborted
//! records from `read_committed` consumers. tansu, the broker of the other Kafka tests, has
//! no EndTxn. Nothing is mocked; a test whose broker cannot be started fails and says why.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{exit_within_a_minute, free_port, json_lines_field, kill_after_each, wait_for_port};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// A noida-db broker (Kafka only) on a free port; killed when dropped.
struct Broker {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Self {
        let bin = std::env::var_os("SLUICE_NOIDA").map(PathBuf::from);
        let bin = bin.expect("SLUICE_NOIDA is not set: run scripts/test, which installs noida-db");
        assert!(
            bin.exists(),
            "{} is missing: run scripts/test",
            bin.display()
        );
        let port = free_port();
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "start",
                "--only",
                "kafka",
                "--kafka-port",
                &port.to_string(),
            ])
            .arg("--data-dir")
            .arg(data.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start noida-db");
        wait_for_port(port, "noida-db");
        Self {
            child,
            port,
            _data: data,
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn create_topic(&self, topic: &str, partitions: i32) {
        common::create_topic(&self.bootstrap(), topic, partitions).await;
    }

    /// Every message of `topic`'s `partitions` a consumer with `isolation` reads, as the
    /// `n` of each JSON row.
    fn read_all(&self, topic: &str, partitions: i32, isolation: &str) -> Vec<i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4")
            .set("group.id", format!("check-{isolation}"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", isolation)
            .create()
            .unwrap();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let (mut got, mut ended) = (Vec::new(), 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ended < partitions {
            assert!(Instant::now() < deadline, "reading {topic} timed out");
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => ended += 1,
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                Some(Ok(m)) => {
                    let row: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap()).unwrap();
                    got.push(row["n"].as_i64().unwrap());
                }
            }
        }
        got
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sluice(dir: &Path, script: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("run")
        .arg(script)
        .arg("--quiet")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--checkpoint-interval", "200ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn job(dir: &Path, broker: &Broker, rows: u64, extra: &str) -> PathBuf {
    let script = dir.join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE nums (n BIGINT) WITH (connector = 'generator', rows = {rows}, rows_per_second = 10000);
CREATE SINK evens WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'evens', format = 'json', key = 'n'{extra})
AS SELECT n, n * 10 AS tens FROM nums WHERE n % 2 = 0;",
            broker.bootstrap()
        ),
    )
    .unwrap();
    script
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// How many times each value occurs.
fn counts(values: &[i64]) -> BTreeMap<i64, usize> {
    let mut counts = BTreeMap::new();
    for v in values {
        *counts.entry(*v).or_default() += 1;
    }
    counts
}

/// Runs `script` until checkpoint `checkpoint` is stored, and aborts the process before
/// that checkpoint's transaction commits: the transaction no other producer can commit.
fn abort_before_commit(dir: &Path, script: &Path, checkpoint: &str) {
    let out = sluice(
        dir,
        script,
        &[("SLUICE_TEST_ABORT_BEFORE_COMMIT", checkpoint)],
    )
    .output()
    .unwrap();
    assert!(!out.status.success(), "the process should have aborted");
}

/// Runs `script` to its end.
fn run_to_end(dir: &Path, script: &Path) {
    let out = sluice(dir, script, &[]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Fails unless `got` holds each even number below `rows` exactly once, and nothing else.
fn assert_each_even_row_once(got: &BTreeMap<i64, usize>, rows: u64, after: &str) {
    let rows = i64::try_from(rows).unwrap();
    let missing: Vec<i64> = (0..rows)
        .filter(|n| n % 2 == 0 && !got.contains_key(n))
        .collect();
    let twice: Vec<i64> = got
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    let strays: Vec<i64> = got
        .keys()
        .copied()
        .filter(|n| n % 2 != 0 || *n < 0 || *n >= rows)
        .collect();
    assert!(
        missing.is_empty() && twice.is_empty() && strays.is_empty(),
        "after {after}: {} rows missing (first {:?}), {} more than once (first {:?}), {} not expected (first {:?})",
        missing.len(),
        &missing[..missing.len().min(5)],
        twice.len(),
        &twice[..twice.len().min(5)],
        strays.len(),
        &strays[..strays.len().min(5)]
    );
}

#[tokio::test]
async fn a_kafka_sink_killed_and_restarted_delivers_every_row_exactly_once() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let broker = Broker::start();
    broker.create_topic("evens", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let rows = 30_000;
    let script = job(
        dir.path(),
        &broker,
        rows,
        ", delivery_guarantee = 'exactly_once'",
    );

    // The worst moment first: checkpoint 3 is stored, and the process dies before it
    // commits its transaction.
    abort_before_commit(dir.path(), &script, "3");
    // Then SIGKILLs wherever they land.
    let kills = kill_after_each(&[900, 700, 1100], || {
        sluice(dir.path(), &script, &[]).spawn().unwrap()
    });
    run_to_end(dir.path(), &script);
    assert!(
        kills >= 2,
        "only {kills} kills: the pipeline finished too fast to test"
    );

    let committed = broker.read_all("evens", 2, "read_committed");
    assert_each_even_row_once(
        &counts(&committed),
        rows,
        &format!("the abort and {kills} kills"),
    );
    // The runs that died did send rows that a restart sent again: only the transactions
    // keep them from the output.
    let everything = broker.read_all("evens", 2, "read_uncommitted");
    assert!(
        everything.len() > committed.len(),
        "no row was sent twice, so nothing was tested: {} sent, {} committed",
        everything.len(),
        committed.len()
    );

    // Sluice reads the topic back with a bounded read, which ends although the topic's
    // last offsets are transaction markers (never delivered); read_committed reads each
    // row once, read_uncommitted every row sent.
    for (isolation, want) in [
        ("read_committed", &committed),
        ("read_uncommitted", &everything),
    ] {
        let got = read_back(dir.path(), &broker, isolation);
        assert_eq!(counts(&got), counts(want), "{isolation}");
    }
}

#[tokio::test]
async fn a_crash_before_the_first_commit_is_written_again() {
    // No marker exists yet when the first transaction is lost: recovery must not take
    // the missing marker for one the broker expired.
    let broker = Broker::start();
    broker.create_topic("evens", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let rows = 6_000;
    let script = job(
        dir.path(),
        &broker,
        rows,
        ", delivery_guarantee = 'exactly_once'",
    );
    abort_before_commit(dir.path(), &script, "1");
    run_to_end(dir.path(), &script);
    let got = counts(&broker.read_all("evens", 2, "read_committed"));
    assert_each_even_row_once(&got, rows, "an abort before the first commit");
}

/// The `n` of every row a bounded `kafka` source with `isolation` reads from `evens`.
fn read_back(dir: &Path, broker: &Broker, isolation: &str) -> Vec<i64> {
    let out = dir.join(format!("copy-{isolation}"));
    let script = dir.join(format!("read-{isolation}.sql"));
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE back (n BIGINT, tens BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'evens', group_id = 'back-{isolation}', bounded = 'latest', isolation_level = '{isolation}');
CREATE SINK copy WITH (connector = 'file', path = '{}', format = 'json') AS SELECT n FROM back;",
            broker.bootstrap(),
            out.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(&script)
        .arg("--quiet")
        .arg("--data-dir")
        .arg(dir.join(format!("data-{isolation}")))
        .args(["--checkpoint-interval", "0s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = exit_within_a_minute(
        &mut child,
        &format!("the bounded {isolation} read of a transactional topic"),
    );
    assert!(status.success(), "the {isolation} read failed");
    json_lines_field(&out, "n")
}

/// The error `sluice run` stops `script` with, checkpointing every `interval`.
fn refusal(dir: &Path, script: &Path, interval: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("run")
        .arg(script)
        .arg("--quiet")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--checkpoint-interval", interval])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{} ran", script.display());
    stderr(&out)
}

#[tokio::test]
async fn exactly_once_without_checkpoints_or_with_a_short_transaction_timeout_is_refused() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let script = job(
        dir.path(),
        &broker,
        10,
        ", delivery_guarantee = 'exactly_once'",
    );
    let err = refusal(dir.path(), &script, "0s");
    assert!(err.contains("checkpoints are off"), "{err}");

    // A transaction timeout the broker would abort transactions with before their commit.
    let script = job(
        dir.path(),
        &broker,
        10,
        ", delivery_guarantee = 'exactly_once', 'properties.transaction.timeout.ms' = '15000'",
    );
    let err = refusal(dir.path(), &script, "10s");
    assert!(
        err.contains("above twice the checkpoint interval (10000 ms)"),
        "{err}"
    );
}
