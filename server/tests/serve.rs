//! `sluice serve` end to end: a real server process on free loopback ports, driven with the
//! generated tonic client: DDL, queries over a materialized view, pipelines, Subscribe, error
//! status codes, and a SIGTERM followed by a restart on the same data dir.

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{free_port, http_get, http_post as post};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_client::SluiceServiceClient;
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    child: Child,
    grpc: u16,
    http: u16,
}

impl Server {
    fn start(data_dir: &std::path::Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    fn start_with(data_dir: &std::path::Path, extra: &[&str]) -> Self {
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, grpc, http }
    }

    async fn client(&self) -> SluiceServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match SluiceServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc)).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("server did not come up: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn decode(ipc: &[u8]) -> Vec<RecordBatch> {
    StreamReader::try_new(ipc, None)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

async fn execute(
    client: &mut SluiceServiceClient<Channel>,
    sql: &str,
) -> Result<Vec<pb::StatementResult>, tonic::Status> {
    client
        .execute(pb::ExecuteRequest {
            sql: sql.to_string(),
        })
        .await
        .map(|r| r.into_inner().results)
}

const SETUP: &str = "
CREATE SOURCE readings (sensor BIGINT, reading BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
WITH (connector = 'generator', rows = 6000, seed = 5,
      'fields.sensor.kind' = 'random', 'fields.sensor.start' = 1, 'fields.sensor.end' = 3,
      'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 10);
CREATE MATERIALIZED VIEW per_sensor AS
SELECT sensor, window_start, count(*) AS n, sum(reading) AS total
FROM TUMBLE(readings, ts, INTERVAL '10' SECOND) GROUP BY sensor, window_start;
";

#[tokio::test]
async fn serve_runs_statements_reports_errors_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut client = server.client().await;

    let results = execute(&mut client, SETUP).await.unwrap();
    assert_eq!(results.len(), 2);
    assert!(
        results[1].message.contains("per_sensor"),
        "{:?}",
        results[1]
    );

    // The view's pipeline finishes (bounded source); its state answers ad-hoc queries.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = client
            .describe_pipeline(pb::PipelineRequest {
                name: "per_sensor".into(),
            })
            .await
            .unwrap()
            .into_inner();
        if p.status == pb::PipelineStatus::Finished as i32 {
            assert_eq!(p.rows_in, 6000);
            assert!(p.plan.contains("WindowAggregate"), "{}", p.plan);
            break;
        }
        assert!(Instant::now() < deadline, "pipeline did not finish: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = execute(
        &mut client,
        "SELECT sum(n) AS n, count(*) AS windows FROM per_sensor",
    )
    .await
    .unwrap();
    let batches = decode(&rows[0].arrow_ipc);
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(text.contains("| 6000 | 18      |"), "{text}");

    // A bounded continuous query through Execute returns all its rows.
    let q = execute(
        &mut client,
        "SELECT sensor FROM readings WHERE reading IS NOT NULL AND sensor = 2",
    )
    .await
    .unwrap();
    assert!(q[0].row_count > 1000, "{}", q[0].row_count);

    // Subscribe to a query: batches arrive as Arrow IPC until the bounded query ends.
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Query(
                "SELECT sensor, ts FROM readings".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        received += decode(&msg.arrow_ipc)
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>();
    }
    assert_eq!(received, 6000);

    // A subscriber that leaves an unbounded query stops its pipeline cleanly.
    execute(
        &mut client,
        "CREATE SOURCE ticks (n BIGINT) WITH (connector = 'generator', rows_per_second = 1000)",
    )
    .await
    .unwrap();
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Query(
                "SELECT n FROM ticks".into(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_pipelines(pb::ListPipelinesRequest {})
            .await
            .unwrap()
            .into_inner();
        let ticks = listed
            .pipelines
            .iter()
            .find(|p| p.plan.contains("ticks"))
            .cloned()
            .unwrap();
        if ticks.status == pb::PipelineStatus::Stopped as i32 {
            break;
        }
        assert!(
            ticks.status == pb::PipelineStatus::Running as i32,
            "{ticks:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the pipeline kept running after its subscriber left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    execute(&mut client, "DROP SOURCE ticks").await.unwrap();

    // Errors carry status codes and positions.
    let e = execute(&mut client, "SELEC 1").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Line: 1, Column"), "{}", e.message());
    let e = execute(&mut client, "SELECT nope FROM readings")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nope"), "{}", e.message());
    let e = execute(
        &mut client,
        "CREATE SOURCE readings (a BIGINT) WITH (connector = 'generator')",
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    let e = execute(&mut client, "DROP SINK nothing").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = client
        .describe_pipeline(pb::PipelineRequest {
            name: "nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = client
        .stop_pipeline(pb::PipelineRequest {
            name: "per_sensor".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // HTTP health, and the Prometheus metrics.
    let metrics = http_get(server.http, "/metrics");
    assert!(
        metrics.contains("# TYPE sluice_rows_in_total counter")
            && metrics.contains("sluice_rows_in_total{pipeline=\"per_sensor\"} 6000")
            && metrics.contains("sluice_pipeline_running{pipeline=\"per_sensor\"} 0"),
        "{metrics}"
    );
    let health = http_get(server.http, "/health");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "{health}"
    );
    assert!(health.trim_end().ends_with("ok"), "{health}");

    // SIGTERM stops cleanly; a restart on the same data dir has the same catalog and
    // restarts the view's pipeline.
    assert!(server.terminate().success());
    let server = Server::start(dir.path());
    let mut client = server.client().await;
    let shown = execute(&mut client, "SHOW SOURCES; SHOW MATERIALIZED VIEWS")
        .await
        .unwrap();
    let sources =
        datafusion::arrow::util::pretty::pretty_format_batches(&decode(&shown[0].arrow_ipc))
            .unwrap()
            .to_string();
    assert!(sources.contains("readings"), "{sources}");
    let views =
        datafusion::arrow::util::pretty::pretty_format_batches(&decode(&shown[1].arrow_ipc))
            .unwrap()
            .to_string();
    assert!(views.contains("per_sensor"), "{views}");
    // The view's bounded input had been consumed: its rows are restored as saved at the
    // clean stop, without running its query again.
    assert!(views.contains("finished (restored)"), "{views}");
    let rows = execute(
        &mut client,
        "SELECT sum(n) AS n, count(*) AS windows FROM per_sensor",
    )
    .await
    .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&decode(&rows[0].arrow_ipc))
        .unwrap()
        .to_string();
    assert!(text.contains("| 6000 | 18      |"), "{text}");
    let listed = client
        .list_pipelines(pb::ListPipelinesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        !listed.pipelines.iter().any(|p| p.name == "per_sensor"),
        "no pipeline reruns a restored view: {listed:?}"
    );
    assert!(server.terminate().success());
}

/// Runs `sql` and returns its first result as text.
async fn text(client: &mut SluiceServiceClient<Channel>, sql: &str) -> String {
    let results = execute(client, sql).await.unwrap();
    datafusion::arrow::util::pretty::pretty_format_batches(&decode(&results[0].arrow_ipc))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_view_over_an_unbounded_input_keeps_its_rows_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--checkpoint-interval", "200ms"];
    let server = Server::start_with(dir.path(), &args);
    let mut client = server.client().await;
    // Unbounded: 2,000 rows per second, 10 ms of event time apart, so every 10 s window
    // holds exactly 1,000 rows over the three sensors.
    execute(
        &mut client,
        "CREATE SOURCE readings (sensor BIGINT, reading BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)
         WITH (connector = 'generator', rows_per_second = 2000, seed = 5,
               'fields.sensor.kind' = 'random', 'fields.sensor.start' = 1, 'fields.sensor.end' = 3,
               'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 10);
         CREATE MATERIALIZED VIEW per_sensor AS
         SELECT sensor, window_start, count(*) AS n FROM TUMBLE(readings, ts, INTERVAL '10' SECOND)
         GROUP BY sensor, window_start;",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let windows = |t: &str| -> usize {
        t.lines()
            .filter_map(|l| l.trim().trim_matches('|').trim().parse().ok())
            .next()
            .unwrap_or(0)
    };
    let count = "SELECT count(DISTINCT window_start) AS w FROM per_sensor";
    let before = windows(&text(&mut client, count).await);
    assert!(before >= 2, "windows before the restart: {before}");
    assert!(server.terminate().success());

    let server = Server::start_with(dir.path(), &args);
    let mut client = server.client().await;
    // Restored from the last checkpoint, not recomputed from nothing.
    let after = windows(&text(&mut client, count).await);
    assert!(
        after >= before,
        "{after} windows after the restart, {before} before"
    );
    let p = client
        .describe_pipeline(pb::PipelineRequest {
            name: "per_sensor".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let stats = p.checkpoints.expect("the pipeline checkpoints");
    assert!(stats.restored_from > 0, "{stats:?}");
    // It goes on from where it stopped: every window, before and after the restart, holds
    // exactly its 1,000 rows: none lost, none counted twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let bad = text(
        &mut client,
        "SELECT window_start, sum(n) AS rows FROM per_sensor GROUP BY window_start HAVING sum(n) <> 1000",
    )
    .await;
    assert!(
        !bad.contains("2024-"),
        "windows with lost or doubled rows:\n{bad}"
    );
    let total = windows(&text(&mut client, count).await);
    assert!(
        total > after,
        "the pipeline resumed: {total} windows, {after} at restart"
    );
    let shown = text(&mut client, "SHOW CHECKPOINTS").await;
    assert!(shown.contains("per_sensor"), "{shown}");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn rows_posted_to_a_webhook_source_reach_its_view() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let mut client = server.client().await;
    execute(
        &mut client,
        "CREATE SOURCE events (k VARCHAR, n BIGINT) WITH (connector = 'webhook', linger = '20ms');
         CREATE MATERIALIZED VIEW totals AS SELECT k, count(*) AS c, sum(n) AS s FROM events GROUP BY k;",
    )
    .await
    .unwrap();
    let lines: String = (0..100)
        .map(|i| format!("{{\"k\": \"{}\", \"n\": {i}}}\n", ["a", "b"][i % 2]))
        .collect();
    assert!(post(server.http, "/ingest/events", &lines).contains(" 200 "));
    // A bad line is skipped and counted; the good ones in the same body still count.
    assert!(
        post(
            server.http,
            "/ingest/events",
            "{\"k\": \"a\", \"n\": 1000}\nnot json\n"
        )
        .contains(" 200 ")
    );
    assert!(post(server.http, "/ingest/nope", "{}\n").contains(" 404 "));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = text(&mut client, "SELECT k, c, s FROM totals ORDER BY k").await;
        if t.contains("| a | 51 | 3450 |") && t.contains("| b | 50 | 2500 |") {
            break;
        }
        assert!(Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = client
        .describe_pipeline(pb::PipelineRequest {
            name: "totals".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.bad_records, 1);
    assert!(server.terminate().success());
}
