//! What a careless or hostile client sends must not take the server down, lose rows or hold
//! up other clients: each test pins one defect found by fuzzing a release build (issue 14).

// Test helpers fail the test loudly: unwrap, expect and panic are how they do it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::{Served, http_get, http_post};

use std::time::{Duration, Instant};

use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_client::SluiceServiceClient;
use tonic::Code;
use tonic::transport::Channel;

async fn client(server: &Served) -> SluiceServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match SluiceServiceClient::connect(format!("http://127.0.0.1:{}", server.grpc)).await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("server did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn execute(
    client: &mut SluiceServiceClient<Channel>,
    sql: &str,
) -> Result<pb::ExecuteResponse, tonic::Status> {
    client
        .execute(pb::ExecuteRequest { sql: sql.to_string() })
        .await
        .map(|r| r.into_inner())
}

/// Rows of `SELECT count(*)`-like answers: the first column of the last result, as text.
fn row_count(response: &pb::ExecuteResponse) -> u64 {
    response.results.last().map_or(0, |r| r.row_count)
}

/// `/health` round trips while something else runs: (p50, p99, max) in milliseconds.
fn health_latency(port: u16, samples: usize) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            assert!(http_get(port, "/health").contains("ok"));
            let t = started.elapsed().as_secs_f64() * 1000.0;
            std::thread::sleep(Duration::from_millis(20));
            t
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), ms[ms.len() - 1])
}

async fn running_queries(client: &mut SluiceServiceClient<Channel>) -> usize {
    let list = client
        .list_pipelines(pb::ListPipelinesRequest {})
        .await
        .unwrap()
        .into_inner();
    list.pipelines
        .iter()
        .filter(|p| p.name.starts_with("query-") && p.status == pb::PipelineStatus::Running as i32)
        .count()
}

/// Regression: a query held the session's lock while its rows were collected, so another
/// client's SHOW SOURCES timed out; and a query whose client gave up ran on.
#[tokio::test]
async fn an_endless_select_holds_up_no_other_client_and_stops_when_its_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let mut c = client(&server).await;
    execute(
        &mut c,
        "CREATE SOURCE slow (id BIGINT) WITH (connector = 'generator', rows = 100000000, rows_per_second = 100)",
    )
    .await
    .unwrap();
    let mut other = c.clone();
    let endless = tokio::spawn(async move { execute(&mut other, "SELECT id FROM slow").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!endless.is_finished(), "the query should still run");
    assert_eq!(running_queries(&mut c).await, 1);

    let started = Instant::now();
    let shown = tokio::time::timeout(Duration::from_secs(5), execute(&mut c, "SHOW SOURCES"))
        .await
        .expect("SHOW SOURCES waited for the other client's query")
        .unwrap();
    assert_eq!(row_count(&shown), 1);
    println!("SHOW SOURCES beside an endless SELECT: {:?}", started.elapsed());
    let http = server.http;
    let (p50, p99, max) = tokio::task::spawn_blocking(move || health_latency(http, 50))
        .await
        .unwrap();
    println!("/health beside an endless SELECT: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    assert!(p99 < 100.0, "/health p99 {p99:.1} ms");

    // The client goes away: its query stops.
    endless.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_queries(&mut c).await > 0 {
        assert!(Instant::now() < deadline, "the query ran on after its client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Regression: a sink whose PostgreSQL host accepts the connection and never answers held
/// every other client's DDL for as long as the connect took.
#[tokio::test]
async fn a_silent_postgres_peer_holds_up_no_other_clients_ddl() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and never answers.
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok((c, _)) = silent.accept() {
                conns.push(c);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let mut c = client(&server).await;
    execute(
        &mut c,
        "CREATE SOURCE g (id BIGINT) WITH (connector = 'generator', rows = 10)",
    )
    .await
    .unwrap();
    let mut other = c.clone();
    let sql = format!(
        "CREATE SINK pg FROM g WITH (connector = 'postgres', url = 'postgres://sluice@127.0.0.1:{port}/sluice', table = 't')"
    );
    let stuck = tokio::spawn(async move { execute(&mut other, &sql).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stuck.is_finished(), "the connect should still wait");
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(5),
        execute(
            &mut c,
            "CREATE SOURCE h (id BIGINT) WITH (connector = 'generator', rows = 10); SHOW SOURCES",
        ),
    )
    .await
    .expect("DDL waited for the other client's connect")
    .unwrap();
    println!("DDL beside a silent PostgreSQL peer: {:?}", started.elapsed());
    stuck.abort();
    drop(held);
}

/// Regression: `SELECT * FROM v, v x, v y` over a materialized view grew to 3.6 GB and
/// wedged the server.
#[tokio::test]
async fn an_ad_hoc_query_past_its_memory_limit_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start_with(dir.path(), &["--query-memory-mib", "32"]);
    let mut c = client(&server).await;
    execute(
        &mut c,
        "CREATE SOURCE g (id BIGINT, s VARCHAR) WITH (connector = 'generator', rows = 3000, 'fields.id.kind' = 'sequence');
         CREATE MATERIALIZED VIEW v AS SELECT id, count(*) AS n FROM g GROUP BY id",
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while row_count(&execute(&mut c, "SELECT * FROM v").await.unwrap()) < 3000 {
        assert!(Instant::now() < deadline, "the view did not fill");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let err = execute(&mut c, "SELECT * FROM v, v x, v y").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("memory limit"), "{}", err.message());
    // The server is still there, and the view answers.
    assert_eq!(row_count(&execute(&mut c, "SELECT * FROM v").await.unwrap()), 3000);
    assert!(http_get(server.http, "/health").contains("ok"));
}

/// Regression: the SQL front end overflowed the stack on long operator chains and deep
/// nesting, and errors quoting a huge statement did not fit in gRPC metadata.
#[tokio::test]
async fn deep_and_huge_statements_are_user_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let mut c = client(&server).await;
    let chain = format!("SELECT {}", vec!["1"; 2000].join("+"));
    let ands = format!("SELECT 1 WHERE {}", vec!["1 = 1"; 2000].join(" AND "));
    let concat = format!("SELECT {}", vec!["'a'"; 2000].join(" || "));
    let parens = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let casts = format!("SELECT {}1{}", "CAST(".repeat(50), " AS BIGINT)".repeat(50));
    for sql in [&chain, &ands, &concat, &parens, &casts] {
        let started = Instant::now();
        let err = execute(&mut c, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}: {err}", &sql[..40]);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{} took {:?}",
            &sql[..40],
            started.elapsed()
        );
    }
    // A statement over the size limit: refused, with a message that fits.
    let huge = format!("SELECT '{}'", "x".repeat(2 << 20));
    let err = execute(&mut c, &huge).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("over the limit"), "{}", err.message());
    // Division by zero is the user's.
    let err = execute(
        &mut c,
        "CREATE SOURCE g (id BIGINT) WITH (connector = 'generator', rows = 10); SELECT id / 0 FROM g",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().to_lowercase().contains("divide by zero"), "{err}");
    // 200,000 statements parse in linear time.
    let many = "SELECT 1;".repeat(200_000);
    let started = Instant::now();
    let _ = execute(&mut c, &many).await;
    println!("200,000 statements: {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(http_get(server.http, "/health").contains("ok"));
    assert_eq!(row_count(&execute(&mut c, "SHOW SOURCES").await.unwrap()), 1);
}

/// Regression: a JSON record with 100,000 nested objects, POSTed to a webhook source,
/// overflowed the stack and killed the server.
#[tokio::test]
async fn a_deeply_nested_json_record_posted_to_a_webhook_is_one_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = Served::start(dir.path());
    let mut c = client(&server).await;
    execute(
        &mut c,
        "CREATE SOURCE hook (id BIGINT, s VARCHAR) WITH (connector = 'webhook');
         CREATE MATERIALIZED VIEW seen AS SELECT id, s FROM hook",
    )
    .await
    .unwrap();
    let deep = format!(
        "{{\"id\":2,\"s\":{}1{}}}",
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    let body = format!("{{\"id\":1,\"s\":\"a\"}}\n{deep}\n{{\"id\":3,\"s\":\"c\"}}\n");
    assert!(body.len() > 300_000);
    let reply = http_post(server.http, "/ingest/hook", &body);
    assert!(reply.contains(" 200 "), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = row_count(&execute(&mut c, "SELECT * FROM seen").await.unwrap());
        if rows == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the view has {rows} rows, not 2");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = c
        .describe_pipeline(pb::PipelineRequest {
            name: "seen".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.bad_records, 1);
    assert!(http_post(server.http, "/ingest/hook", "{\"id\":4}\n").contains(" 200 "));
}

/// Regression: the same deeply nested record in a JSON file aborted `sluice run`.
#[test]
fn a_deeply_nested_json_record_in_a_file_is_one_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let deep = format!(
        "{{\"id\":2,\"s\":{}1{}}}",
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    let data = dir.path().join("deep.json");
    std::fs::write(&data, format!("{{\"id\":1}}\n{deep}\n{{\"id\":3}}\n")).unwrap();
    let script = dir.path().join("deep.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE SOURCE src (id BIGINT, s VARCHAR) WITH (connector = 'file', path = '{}', format = 'json');\nSELECT id FROM src;\n",
            data.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--quiet", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg(&script)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains('1') && stdout.contains('3'), "{stdout}");
    assert!(!stdout.contains("| 2"), "{stdout}");
}
