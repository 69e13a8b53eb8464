//! NATS JetStream -> a filter -> NATS, against the machine's own NATS server with
//! JetStream (127.0.0.1:4222). The source acknowledges messages only once the checkpoint
//! that covers them is complete; the tests check the output, that nothing is left
//! unacknowledged, and that a pipeline killed with SIGKILL and restarted neither loses nor
//! duplicates a message on each kind of stream retention. If NATS is down the tests fail
//! and say so.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{avro_long, read_avro_long};

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::stream::RetentionPolicy;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const NATS: &str = "nats://127.0.0.1:4222";

/// A test's own JetStream stream on the machine's NATS, over an input subject no other run
/// uses: the client, JetStream, the stream and its name, the input and an output subject.
struct Fixture {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    stream_name: String,
    input: String,
    output: String,
}

impl Fixture {
    async fn new(tag: &str) -> Self {
        Self::with_retention(tag, RetentionPolicy::Limits).await
    }

    async fn with_retention(tag: &str, retention: RetentionPolicy) -> Self {
        let client = async_nats::connect(NATS)
            .await
            .unwrap_or_else(|e| panic!("NATS is not reachable at {NATS}: {e}"));
        let js = jetstream::new(client.clone());
        let run = format!(
            "{tag}{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        let stream_name = format!("SLUICE_IN_{run}");
        let input = format!("sluice.in.{run}");
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![input.clone()],
                retention,
                ..Default::default()
            })
            .await
            .unwrap();
        Self {
            client,
            js,
            stream,
            stream_name,
            input,
            output: format!("sluice.out.{run}"),
        }
    }

    /// Publishes to the input through JetStream and waits for the server's acknowledgement.
    async fn publish(&self, payload: Vec<u8>) {
        self.js
            .publish(self.input.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// `sluice run` on a script in `dir`, with `extra` arguments.
fn sluice_run(
    dir: &std::path::Path,
    script: &str,
    extra: &[&std::ffi::OsStr],
) -> std::process::Child {
    let path = dir.join("job.sql");
    std::fs::write(&path, script).unwrap();
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", path.to_str().unwrap(), "--quiet"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn jetstream_messages_filtered_into_nats() {
    let f = Fixture::new("").await;
    let (stream_name, input, output) = (&f.stream_name, &f.input, &f.output);
    let mut want = BTreeSet::new();
    for id in 0..1000i64 {
        let value = (id * 7) % 100;
        if value >= 50 {
            want.insert(id);
        }
        f.publish(format!(r#"{{"id": {id}, "value": {value}}}"#).into_bytes())
            .await;
    }
    let mut out = f.client.subscribe(output.clone()).await.unwrap();
    f.client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sluice = sluice_run(
        dir.path(),
        &format!(
            "CREATE SOURCE readings (id BIGINT, value BIGINT)
             WITH (connector = 'nats', servers = '{NATS}', subject = '{input}', stream = '{stream_name}',
                   format = 'json', linger = '50ms');
             CREATE SINK hot WITH (connector = 'nats', servers = '{NATS}', subject = '{output}', format = 'json') AS
             SELECT id, value FROM readings WHERE value >= 50;"
        ),
        &[
            "--data-dir".as_ref(),
            data.as_os_str(),
            "--checkpoint-interval".as_ref(),
            "300ms".as_ref(),
        ],
    );

    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() && Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.next()).await {
            let row: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            assert!(row["value"].as_i64().unwrap() >= 50, "{row}");
            got.insert(row["id"].as_i64().unwrap());
        }
    }
    // Every message is acknowledged once a checkpoint covers it.
    // The source's consumer is named after the pipeline (sink `hot`) and the source.
    let consumer = "sluice-hot-readings";
    let mut info = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let i = f.stream.consumer_info(consumer).await.unwrap();
        if i.num_ack_pending == 0 && i.num_pending == 0 {
            info = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = f.js.delete_stream(stream_name).await;
    assert_eq!(got, want, "filtered messages");
    assert!(info.is_some(), "messages left unacknowledged");
}

/// A value of a nullable Avro long (`["null", "long"]`, the union Sluice derives for a
/// nullable BIGINT column): the branch index 1, then the long.
fn avro_nullable_long(out: &mut Vec<u8>, v: i64) {
    avro_long(out, 1);
    avro_long(out, v);
}

fn read_avro_nullable_long(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    match read_avro_long(bytes, pos) {
        0 => None,
        _ => Some(read_avro_long(bytes, pos)),
    }
}

#[tokio::test]
async fn plain_avro_through_jetstream_and_nats() {
    let f = Fixture::new("avro_").await;
    let (stream_name, input, output) = (&f.stream_name, &f.input, &f.output);
    let mut want = BTreeSet::new();
    for id in 0..500i64 {
        let value = (id * 13) % 100 - 50;
        if value >= 0 {
            want.insert((id, value));
        }
        let mut datum = Vec::new();
        avro_nullable_long(&mut datum, id);
        avro_nullable_long(&mut datum, value);
        f.publish(datum).await;
    }
    // One message that is not a record of the schema: skipped and counted, not fatal.
    f.publish(vec![2u8]).await;
    let mut out = f.client.subscribe(output.clone()).await.unwrap();
    f.client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut sluice = sluice_run(
        dir.path(),
        &format!(
            "CREATE SOURCE readings (id BIGINT, value BIGINT)
             WITH (connector = 'nats', servers = '{NATS}', subject = '{input}', stream = '{stream_name}',
                   format = 'avro', linger = '50ms');
             CREATE SINK positive WITH (connector = 'nats', servers = '{NATS}', subject = '{output}', format = 'avro') AS
             SELECT id, value FROM readings WHERE value >= 0;"
        ),
        &[],
    );
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() && Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.next()).await {
            let mut pos = 0;
            let id = read_avro_nullable_long(&msg.payload, &mut pos).unwrap();
            let value = read_avro_nullable_long(&msg.payload, &mut pos).unwrap();
            assert_eq!(pos, msg.payload.len(), "bytes left over after the record");
            got.insert((id, value));
        }
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = f.js.delete_stream(stream_name).await;
    assert_eq!(got, want, "filtered avro records");
}

/// How many times each id occurs in the finished Parquet files under `dir`.
fn parquet_ids(dir: &std::path::Path) -> BTreeMap<i64, usize> {
    let mut ids = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return ids;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let bytes = bytes::Bytes::from(std::fs::read(&path).unwrap());
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            for id in batch.column(0).as_primitive::<Int64Type>().values() {
                *ids.entry(*id).or_insert(0) += 1;
            }
        }
    }
    ids
}

/// JetStream -> Parquet while messages keep arriving, SIGKILLed and restarted four times:
/// every message published must be in the Parquet output exactly once, and soon. Before
/// the source kept its stream sequence in checkpoints, a restart got what no checkpoint
/// covered only once the server's `ack_wait` (10 minutes) ran out, and what a checkpoint
/// covered but had not been acknowledged yet came back a second time.
async fn killed_and_restarted(tag: &str, retention: RetentionPolicy) {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let f = Fixture::with_retention(tag, retention).await;
    if retention == RetentionPolicy::Interest {
        // An interest stream keeps only what some consumer wants: the pipeline's consumer
        // is there before the first message, as the source would make it.
        f.stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some("sluice-all_readings-readings".to_string()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(600),
                max_ack_pending: 1_000_000,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let total = 40_000i64;
    let publisher = {
        let (js, input) = (f.js.clone(), f.input.clone());
        tokio::spawn(async move {
            let mut acks = Vec::new();
            for id in 0..total {
                let payload = format!(r#"{{"id": {id}, "value": {}}}"#, id % 100);
                acks.push(js.publish(input.clone(), payload.into()).await.unwrap());
                if acks.len() == 500 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                    // About 40,000 messages a second: the kills land mid-stream.
                    tokio::time::sleep(Duration::from_millis(12)).await;
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    let script = format!(
        "CREATE SOURCE readings (id BIGINT, value BIGINT)
         WITH (connector = 'nats', servers = '{NATS}', subject = '{}', stream = '{}',
               format = 'json', batch_size = 1000, linger = '20ms');
         CREATE SINK all_readings WITH (connector = 'parquet', path = '{}', rollover_rows = 2000) AS
         SELECT id, value FROM readings;",
        f.input,
        f.stream_name,
        out.display()
    );
    let args: [&std::ffi::OsStr; 4] = [
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--checkpoint-interval".as_ref(),
        "150ms".as_ref(),
    ];
    for wait_ms in [600u64, 900, 500, 800] {
        let mut sluice = sluice_run(dir.path(), &script, &args);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        assert!(
            sluice.try_wait().unwrap().is_none(),
            "sluice exited on its own"
        );
        sluice.kill().unwrap();
        sluice.wait().unwrap();
    }
    publisher.await.unwrap();
    let mut sluice = sluice_run(dir.path(), &script, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ids = parquet_ids(&out);
    while ids.len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ids = parquet_ids(&out);
    }
    // Time for a late duplicate to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids = parquet_ids(&out);
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = f.js.delete_stream(&f.stream_name).await;
    let missing = (0..total).filter(|id| !ids.contains_key(id)).count();
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert_eq!(
        missing, 0,
        "{missing} of {total} messages missing after the kills"
    );
    assert!(
        twice.is_empty(),
        "written more than once (id, times): {twice:?}"
    );
    assert_eq!(ids.len(), total as usize, "ids that were never published");
}

#[tokio::test]
async fn a_jetstream_pipeline_killed_and_restarted_loses_and_duplicates_nothing() {
    killed_and_restarted("kill_", RetentionPolicy::Limits).await;
}

#[tokio::test]
async fn on_an_interest_stream_a_restart_loses_nothing() {
    killed_and_restarted("interest_", RetentionPolicy::Interest).await;
}

#[tokio::test]
async fn on_a_work_queue_stream_a_restart_loses_nothing() {
    killed_and_restarted("workq_", RetentionPolicy::WorkQueue).await;
}

/// Regression (found in review): a run that died without a checkpoint left messages
/// delivered but unacknowledged on the consumer. The next run took the consumer as it was,
/// so the server held those back for `ack_wait` (10 minutes) and the source then dropped
/// them as redeliveries. Now the consumer is made anew from its acknowledgement floor.
#[tokio::test]
async fn messages_a_dead_run_left_unacknowledged_come_at_once() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let f = Fixture::new("dead_").await;
    for id in 0..100i64 {
        f.publish(format!(r#"{{"id": {id}, "value": 1}}"#).into_bytes())
            .await;
    }
    // The dead run: it took 60 messages and acknowledged none.
    let consumer: jetstream::consumer::PullConsumer = f
        .stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("sluice-copy-readings".to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut taken = consumer.fetch().max_messages(60).messages().await.unwrap();
    let mut n = 0;
    while let Some(m) = taken.next().await {
        m.unwrap();
        n += 1;
    }
    assert_eq!(n, 60);
    let info = f
        .stream
        .consumer_info("sluice-copy-readings")
        .await
        .unwrap();
    assert_eq!(info.num_ack_pending, 60);

    let mut out = f.client.subscribe(f.output.clone()).await.unwrap();
    f.client.flush().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sluice = sluice_run(
        dir.path(),
        &format!(
            "CREATE SOURCE readings (id BIGINT, value BIGINT)
             WITH (connector = 'nats', servers = '{NATS}', subject = '{}', stream = '{}',
                   format = 'json', linger = '20ms');
             CREATE SINK copy WITH (connector = 'nats', servers = '{NATS}', subject = '{}', format = 'json') AS
             SELECT id FROM readings;",
            f.input, f.stream_name, f.output
        ),
        &[],
    );
    let mut got = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 100 && Instant::now() < deadline {
        if let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(1), out.next()).await {
            let row: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            got.insert(row["id"].as_i64().unwrap());
        }
    }
    let _ = sluice.kill();
    let _ = sluice.wait();
    let _ = f.js.delete_stream(&f.stream_name).await;
    assert_eq!(
        got,
        (0..100).collect(),
        "every message, the dead run's included"
    );
}
