//! The `kafka` connector against a real Kafka-protocol broker (tansu, installed by
//! scripts/test and started here on a free loopback port), with Parquet written to a real
//! S3-compatible server (moto's server mode, from the test virtualenv). Nothing is mocked;
//! a test whose service cannot be started fails and says why.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{
    Served, avro_long, exit_within_a_minute, free_port, http_get, json_lines_field,
    kill_after_each, read_avro_long, sample, wait_for_port,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A tool installed by scripts/test, found through its environment variable or the cache.
fn tool(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which installs it ({var})",
        path.display()
    );
    path
}

/// A tansu broker on a free port, with in-memory storage; killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start() -> Self {
        let bin = tool("SLUICE_TANSU", ".cache/sluice-tools/bin/tansu");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start tansu");
        wait_for_port(port, "tansu");
        Self { child, port }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    async fn create_topic(&self, topic: &str, partitions: i32) {
        common::create_topic(&self.bootstrap(), topic, partitions).await;
    }

    /// A producer sending one message per record batch: tansu 0.6 answers ListOffsets
    /// (latest) with the base offset of the last record batch plus one rather than the log
    /// end, so with multi-record batches a bounded read would end early.
    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("broker.address.family", "v4")
            .set("linger.ms", "0")
            .set("batch.num.messages", "1")
            .create()
            .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto's S3 server on a free port with one bucket; killed when dropped.
struct S3 {
    child: Child,
    port: u16,
}

impl S3 {
    fn start(bucket: &str) -> Self {
        let bin = tool("SLUICE_MOTO", ".cache/sluice-venv/bin/moto_server");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start moto_server");
        wait_for_port(port, "moto_server");
        // Create the bucket with a plain S3 PUT (moto does not check signatures).
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            conn,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "creating the bucket: {reply}"
        );
        Self { child, port }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    fn store(&self, bucket: &str) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(bucket)
                .with_endpoint(format!("http://127.0.0.1:{}", self.port))
                .with_allow_http(true)
                .with_access_key_id("test")
                .with_secret_access_key("test")
                .with_region("us-east-1")
                .build()
                .unwrap(),
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bids the tests produce: bid `i` is for auction `i % 40`, priced `(i * 7919) % 1000`,
/// 10 ms of event time after bid `i - 1`, on the partition of its auction.
fn bid(i: u64) -> (i64, i64, i64) {
    let auction = (i % 40) as i64;
    let price = ((i * 7919) % 1000) as i64;
    let ms = 1_704_067_200_000 + (i as i64) * 10;
    (auction, price, ms)
}

async fn produce(broker: &Broker, topic: &str, range: std::ops::Range<u64>, partitions: i32) {
    let producer = broker.producer();
    let mut pending = Vec::new();
    for i in range {
        let (auction, price, ms) = bid(i);
        let payload = format!(r#"{{"auction": {auction}, "price": {price}, "date_time": {ms}}}"#);
        let partition = (auction % i64::from(partitions)) as i32;
        let record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload.as_bytes())
            .partition(partition);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await.unwrap().unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }
}

/// The TUMBLE(10 s) count and sum per auction over bids `range`, as the batch answer.
fn expected(range: std::ops::Range<u64>) -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for i in range {
        let (auction, price, ms) = bid(i);
        let window = ms.div_euclid(10_000) * 10_000;
        let e = out.entry((auction, window)).or_insert((0, 0));
        e.0 += 1;
        e.1 += price;
    }
    out
}

const QUERY: &str = "SELECT auction, window_start, count(*) AS bids, sum(price) AS total
    FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction, window_start";

fn source(broker: &Broker, topic: &str, extra: &str) -> String {
    format!(
        "CREATE SOURCE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP,
            WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
         WITH (connector = 'kafka', bootstrap_servers = '{}', topic = '{topic}', format = 'json'{extra});",
        broker.bootstrap()
    )
}

/// (auction, window start in ms) -> (bids, total) from result batches.
fn collect(batches: &[RecordBatch]) -> BTreeMap<(i64, i64), (i64, i64)> {
    let mut out = BTreeMap::new();
    for b in batches {
        let auction = b.column(0).as_primitive::<Int64Type>();
        // Parquet holds microseconds, the engine nanoseconds: compare in milliseconds.
        let start = datafusion::arrow::compute::cast(
            b.column(1),
            &datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Millisecond,
                None,
            ),
        )
        .unwrap();
        let start = start.as_primitive::<TimestampMillisecondType>();
        let bids = b.column(2).as_primitive::<Int64Type>();
        let total = b.column(3).as_primitive::<Int64Type>();
        for r in 0..b.num_rows() {
            let key = (auction.value(r), start.value(r));
            assert!(
                out.insert(key, (bids.value(r), total.value(r))).is_none(),
                "window {key:?} written twice"
            );
            assert!(total.is_valid(r));
        }
    }
    out
}

fn read_parquet(bytes: bytes::Bytes) -> Vec<RecordBatch> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn local_parquet(dir: &Path) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            out.extend(read_parquet(std::fs::read(path).unwrap().into()));
        }
    }
    out
}

fn sluice(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

#[tokio::test]
async fn kafka_json_bids_tumble_into_parquet_on_s3_equal_the_batch_answer() {
    let broker = Broker::start();
    let s3 = S3::start("lake");
    broker.create_topic("bids", 3).await;
    produce(&broker, "bids", 0..30_000, 3).await;

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "{}\nCREATE SINK per_auction WITH (connector = 'parquet', path = 's3://lake/per_auction') AS {QUERY};",
            source(&broker, "bids", ", bounded = 'latest'")
        ),
    )
    .unwrap();
    let out = sluice(&["run", script.to_str().unwrap(), "--quiet"], &s3.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let store = s3.store("lake");
    let mut batches = Vec::new();
    let listed = futures::TryStreamExt::try_collect::<Vec<_>>(
        store.list(Some(&object_store::path::Path::from("per_auction"))),
    )
    .await
    .unwrap();
    for meta in &listed {
        assert!(
            meta.location.as_ref().ends_with(".parquet"),
            "{}",
            meta.location
        );
        let bytes = store
            .get(&meta.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        batches.extend(read_parquet(bytes));
    }
    let got = collect(&batches);
    let want = expected(0..30_000);
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .take(8)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} windows; differing: {missing:?} got {:?}",
        got.len(),
        want.len(),
        missing.iter().map(|(k, _)| got.get(k)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_kafka_pipeline_killed_and_restarted_loses_and_duplicates_nothing() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let broker = Broker::start();
    broker.create_topic("bids", 3).await;
    let total = 300_000;
    produce(&broker, "bids", 0..total, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "{}\nCREATE SINK per_auction WITH (connector = 'parquet', path = '{}', rollover_rows = 500) AS {QUERY};",
            source(&broker, "bids", ", bounded = 'latest', batch_size = 2000"),
            out_dir.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "run",
        script.to_str().unwrap(),
        "--quiet",
        "--data-dir",
        data.to_str().unwrap(),
        "--checkpoint-interval",
        "200ms",
    ];
    let kills = kill_after_each(&[700, 900, 600, 1100], || {
        sluice(&args, &[]).spawn().unwrap()
    });
    let out = sluice(&args, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        kills >= 2,
        "only {kills} kills: the pipeline finished too fast to test"
    );
    let got = collect(&local_parquet(&out_dir));
    assert_eq!(got, expected(0..total), "after {kills} kills");
}

#[tokio::test]
async fn a_broker_that_stops_for_ten_seconds_loses_nothing() {
    // The kills land on a loaded machine too: every core is kept busy.
    let _hog = common::CpuHog::start();
    let broker = Broker::start();
    broker.create_topic("bids", 2).await;
    produce(&broker, "bids", 0..5_000, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "{}\nCREATE SINK per_auction WITH (connector = 'parquet', path = '{}') AS {QUERY};",
            source(&broker, "bids", ", linger = '50ms'"),
            out_dir.display()
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut child = sluice(
        &[
            "run",
            script.to_str().unwrap(),
            "--quiet",
            "--data-dir",
            data.to_str().unwrap(),
            "--checkpoint-interval",
            "300ms",
        ],
        &[],
    )
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // The broker stops answering (SIGSTOP) for 10 s, then comes back.
    broker.signal("-STOP");
    std::thread::sleep(Duration::from_secs(10));
    broker.signal("-CONT");
    assert!(
        child.try_wait().unwrap().is_none(),
        "sluice gave up on the broker"
    );
    produce(&broker, "bids", 5_000..10_000, 2).await;
    // A late bid far ahead closes every window of the first 10,000.
    produce(&broker, "bids", 20_000..20_001, 2).await;
    produce(&broker, "bids", 20_001..20_002, 2).await;
    let want = expected(0..10_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeMap<_, _> = collect(&local_parquet(&out_dir))
            .into_iter()
            .filter(|((_, w), _)| *w < 1_704_067_200_000 + 100_000)
            .collect();
        if got == want {
            break;
        }
        if Instant::now() >= deadline {
            let missing: std::collections::BTreeSet<i64> = want
                .iter()
                .filter(|(k, v)| got.get(k) != Some(v))
                .map(|((_, w), _)| (w - 1_704_067_200_000) / 1000)
                .collect();
            panic!(
                "after the outage: {} of {} windows; windows (s) missing or wrong: {missing:?}",
                got.len(),
                want.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A schema registry inside the test, serving the two endpoints of the Confluent Schema
/// Registry's documented REST API that Sluice uses: `GET /schemas/ids/{id}` and
/// `POST /subjects/{subject}/versions`. No registry server can be installed from this
/// machine's package registries (Confluent's is a JVM service distributed outside them), so
/// the test serves those endpoints itself, with the registry's JSON bodies and status codes.
#[derive(Default)]
struct Registry {
    /// Schema `id` is `schemas[id - 1]`.
    schemas: Vec<String>,
    subjects: BTreeMap<String, Vec<u32>>,
    /// How often each id was looked up.
    lookups: BTreeMap<u32, usize>,
}

type SharedRegistry = Arc<std::sync::Mutex<Registry>>;

impl Registry {
    fn register(&mut self, subject: &str, schema: &str) -> u32 {
        let id = match self.schemas.iter().position(|s| s == schema) {
            Some(i) => i as u32 + 1,
            None => {
                self.schemas.push(schema.to_string());
                self.schemas.len() as u32
            }
        };
        let versions = self.subjects.entry(subject.to_string()).or_default();
        if !versions.contains(&id) {
            versions.push(id);
        }
        id
    }

    async fn serve(state: SharedRegistry) -> String {
        use axum::extract::{Path as UrlPath, State};
        use axum::http::StatusCode;
        use axum::routing::{get, post};
        async fn by_id(
            State(state): State<SharedRegistry>,
            UrlPath(id): UrlPath<u32>,
        ) -> (StatusCode, String) {
            let mut registry = state.lock().unwrap();
            *registry.lookups.entry(id).or_default() += 1;
            match id
                .checked_sub(1)
                .and_then(|i| registry.schemas.get(i as usize))
            {
                Some(schema) => (
                    StatusCode::OK,
                    serde_json::json!({ "schema": schema }).to_string(),
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error_code": 40403, "message": "Schema not found" })
                        .to_string(),
                ),
            }
        }
        async fn register(
            State(state): State<SharedRegistry>,
            UrlPath(subject): UrlPath<String>,
            body: String,
        ) -> (StatusCode, String) {
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            let schema = body["schema"].as_str().unwrap();
            let id = state.lock().unwrap().register(&subject, schema);
            (StatusCode::OK, serde_json::json!({ "id": id }).to_string())
        }
        let app = axum::Router::new()
            .route("/schemas/ids/{id}", get(by_id))
            .route("/subjects/{subject}/versions", post(register))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://127.0.0.1:{port}")
    }
}

const BID_V1: &str = r#"{"type":"record","name":"Bid","namespace":"test","fields":[
    {"name":"auction","type":"long"},{"name":"price","type":"long"},
    {"name":"date_time","type":{"type":"long","logicalType":"timestamp-millis"}}]}"#;
/// A later version: a new field, and the fields in another order.
const BID_V2: &str = r#"{"type":"record","name":"Bid","namespace":"test","fields":[
    {"name":"auction","type":"long"},{"name":"bidder","type":"string"},
    {"name":"date_time","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"price","type":"long"}]}"#;

/// Bid `i` in the Confluent wire format, written with schema id `v1` or `v2` in runs of 700.
fn avro_bid(i: u64, v1: u32, v2: u32) -> Vec<u8> {
    let (auction, price, ms) = bid(i);
    let mut out = vec![0];
    if (i / 700).is_multiple_of(2) {
        out.extend_from_slice(&v1.to_be_bytes());
        for v in [auction, price, ms] {
            avro_long(&mut out, v);
        }
    } else {
        out.extend_from_slice(&v2.to_be_bytes());
        avro_long(&mut out, auction);
        let bidder = format!("bidder-{}", i % 13);
        avro_long(&mut out, bidder.len() as i64);
        out.extend_from_slice(bidder.as_bytes());
        avro_long(&mut out, ms);
        avro_long(&mut out, price);
    }
    out
}

/// Decodes a record of `schema` (longs, timestamps and nullable longs) by hand: field name
/// to value, NULL as `None`.
fn decode_avro_record(schema: &serde_json::Value, body: &[u8]) -> BTreeMap<String, Option<i64>> {
    let mut pos = 0;
    let mut out = BTreeMap::new();
    for field in schema["fields"].as_array().unwrap() {
        let name = field["name"].as_str().unwrap().to_string();
        let value = match &field["type"] {
            serde_json::Value::Array(branches) => {
                let branch = read_avro_long(body, &mut pos) as usize;
                if branches[branch] == "null" {
                    None
                } else {
                    Some(read_avro_long(body, &mut pos))
                }
            }
            _ => Some(read_avro_long(body, &mut pos)),
        };
        out.insert(name, value);
    }
    assert_eq!(pos, body.len(), "bytes left over after the record");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_with_a_schema_registry_through_a_tumble_into_avro_on_kafka() {
    let broker = Broker::start();
    let state = SharedRegistry::default();
    let registry = Registry::serve(Arc::clone(&state)).await;
    let (v1, v2) = {
        let mut r = state.lock().unwrap();
        (
            r.register("avro_bids-value", BID_V1),
            r.register("avro_bids-value", BID_V2),
        )
    };
    broker.create_topic("avro_bids", 2).await;
    broker.create_topic("bid_totals", 1).await;

    // 5,000 bids in two schema versions, and three bad messages among them: not Avro
    // framing, a truncated record, and a schema id the registry does not know.
    let total = 5_000u64;
    let producer = broker.producer();
    let mut payloads: Vec<(i32, Vec<u8>)> = (0..total)
        .map(|i| ((bid(i).0 % 2) as i32, avro_bid(i, v1, v2)))
        .collect();
    payloads.insert(100, (0, b"not avro".to_vec()));
    let mut truncated = avro_bid(7, v1, v2);
    truncated.truncate(7);
    payloads.insert(2_000, (1, truncated));
    payloads.insert(
        3_000,
        (0, {
            let mut unknown = avro_bid(9, v1, v2);
            unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
            unknown
        }),
    );
    let mut pending = Vec::new();
    for (partition, payload) in &payloads {
        let record = FutureRecord::<[u8], [u8]>::to("avro_bids")
            .payload(payload)
            .partition(*partition);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for d in pending {
        d.await.unwrap().unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP,
                WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND)
             WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = 'avro_bids',
                   format = 'avro', schema_registry = '{registry}', bounded = 'latest');
             CREATE SINK totals WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}',
                   topic = 'bid_totals', format = 'avro', schema_registry = '{registry}',
                   key = 'auction') AS {QUERY};",
            bootstrap = broker.bootstrap()
        ),
    )
    .unwrap();
    let mut run = sluice(&["run", script.to_str().unwrap(), "--quiet"], &[]);
    let out = tokio::task::spawn_blocking(move || run.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "sluice run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The sink registered its schema under the topic's value subject (Confluent's
    // TopicNameStrategy); each writer schema was looked up once.
    let (sink_id, sink_schema, lookups) = {
        let r = state.lock().unwrap();
        let ids = r
            .subjects
            .get("bid_totals-value")
            .cloned()
            .unwrap_or_default();
        assert_eq!(ids.len(), 1, "subjects: {:?}", r.subjects);
        let schema: serde_json::Value =
            serde_json::from_str(&r.schemas[ids[0] as usize - 1]).unwrap();
        (ids[0], schema, r.lookups.clone())
    };
    assert_eq!(
        lookups,
        BTreeMap::from([(v1, 1), (v2, 1), (99, 1)]),
        "registry lookups by id"
    );

    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("group.id", "avro-check")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("bid_totals", 0, rdkafka::Offset::Beginning)
        .unwrap();
    rdkafka::consumer::Consumer::assign(&consumer, &tpl).unwrap();
    let want = expected(0..total);
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() && Instant::now() < deadline {
        let Ok(Ok(msg)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        use rdkafka::Message;
        let payload = msg.payload().unwrap();
        assert_eq!(payload[0], 0, "magic byte");
        assert_eq!(
            u32::from_be_bytes(payload[1..5].try_into().unwrap()),
            sink_id
        );
        let row = decode_avro_record(&sink_schema, &payload[5..]);
        let auction = row["auction"].unwrap();
        assert_eq!(
            msg.key(),
            Some(auction.to_string().as_bytes()),
            "message key"
        );
        let window_ms = row["window_start"].unwrap() / 1_000_000;
        let value = (row["bids"].unwrap(), row["total"].unwrap());
        assert!(
            got.insert((auction, window_ms), value).is_none(),
            "window ({auction}, {window_ms}) written twice"
        );
    }
    assert_eq!(got, want, "schema of the sink: {sink_schema}");
}

#[tokio::test]
async fn a_served_kafka_pipeline_reports_its_records_bytes_and_lag() {
    let broker = Broker::start();
    broker.create_topic("bids", 2).await;
    produce(&broker, "bids", 0..4_000, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(&dir.path().join("data"));
    let http = server.http;
    let ddl = format!(
        "{} CREATE MATERIALIZED VIEW per_auction AS {QUERY};",
        source(&broker, "bids", "")
    );
    server.sql(&ddl);
    // Everything produced is read, and librdkafka's statistics then put the lag at zero.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let metrics = http_get(http, "/metrics");
        let rows = sample(&metrics, "sluice_rows_in_total", "per_auction");
        let lag = sample(&metrics, "sluice_source_lag_records", "per_auction");
        if rows == Some(4_000.0) && lag == Some(0.0) {
            break metrics;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let bytes = sample(&metrics, "sluice_bytes_in_total", "per_auction").unwrap();
    assert!(bytes > 4_000.0 * 40.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "sluice_bad_records_total", "per_auction"),
        Some(0.0)
    );
    assert_eq!(
        sample(&metrics, "sluice_pipeline_running", "per_auction"),
        Some(1.0)
    );
}

#[tokio::test]
async fn tombstones_are_passed_over_and_a_bounded_read_ends_after_one() {
    let broker = Broker::start();
    broker.create_topic("keyed", 1).await;
    let producer = broker.producer();
    // Tombstones (null values: a key deleted from a compacted topic) hold no row, and with
    // on_error = 'fail' a tombstone taken for a bad record would fail the pipeline. The
    // last message is one, so the bounded read must also move past it to end.
    for (key, value) in [
        ("a", Some(r#"{"id": 1}"#)),
        ("a", None),
        ("b", Some(r#"{"id": 2}"#)),
        ("b", None),
    ] {
        let mut record = FutureRecord::<str, str>::to("keyed").key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let script = dir.path().join("job.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE keyed (id BIGINT) WITH (connector = 'kafka', bootstrap_servers = '{}', topic = 'keyed', bounded = 'latest', on_error = 'fail');
CREATE SINK ids WITH (connector = 'file', path = '{}', format = 'json') AS SELECT id FROM keyed;",
            broker.bootstrap(),
            out_dir.display()
        ),
    )
    .unwrap();
    let mut child = sluice(
        &[
            "run",
            script.to_str().unwrap(),
            "--quiet",
            "--checkpoint-interval",
            "0s",
        ],
        &[],
    )
    .current_dir(dir.path())
    .spawn()
    .unwrap();
    let status = exit_within_a_minute(&mut child, "the bounded read ending on a tombstone");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");
    let mut ids = json_lines_field(&out_dir, "id");
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
}
