//! Server benchmark: a real `sluice serve` on loopback.
//!
//! 1. `SELECT * FROM mv` through Arrow Flight SQL over a 1,000,000-row materialized view:
//!    time from the query to the last row received (target: under 1 s).
//! 2. Subscribe latency: a materialized view over a paced generator emits a window every
//!    second; each batch carries the server time it was emitted, and the client measures
//!    how long it took to arrive (target: under 100 ms).
//!
//! `cargo build --release --bin sluice --bin serve-bench && target/release/serve-bench`

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::Parser;
use futures::TryStreamExt;
use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_client::SluiceServiceClient;
use tonic::transport::Channel;

/// Flight SQL query time over a large materialized view, and Subscribe latency.
#[derive(Debug, Parser)]
struct Args {
    /// The sluice binary (default: beside this one).
    #[arg(long)]
    sluice: Option<std::path::PathBuf>,
    /// Rows in the materialized view.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Flight SQL queries to time.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Windows to measure Subscribe latency over.
    #[arg(long, default_value_t = 10)]
    windows: usize,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn connect(port: u16) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(format!("http://127.0.0.1:{port}"))?
            .connect()
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e).context("server did not come up"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_finished(
    client: &mut SluiceServiceClient<Channel>,
    name: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let p = client
            .describe_pipeline(pb::PipelineRequest { name: name.into() })
            .await?
            .into_inner();
        if p.status == pb::PipelineStatus::Finished as i32 {
            return Ok(());
        }
        if p.status == pb::PipelineStatus::Failed as i32 || Instant::now() > deadline {
            bail!("pipeline {name} did not finish: {p:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sluice = match args.sluice {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("sluice"),
    };
    let dir = tempfile::tempdir()?;
    let (grpc, http) = (free_port()?, free_port()?);
    let _server = Server(
        Command::new(&sluice)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{grpc}"),
                "--http",
                &format!("127.0.0.1:{http}"),
                "--data-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", sluice.display()))?,
    );
    let channel = connect(grpc).await?;
    let mut client = SluiceServiceClient::new(channel.clone());

    // 1. A 1,000,000-row materialized view, read through Flight SQL.
    let setup = format!(
        "CREATE SOURCE big (id BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
         WITH (connector = 'generator', rows = {}, 'fields.ts.start' = '2024-01-01T00:00:00Z', 'fields.ts.interval_ms' = 1);
         CREATE MATERIALIZED VIEW mv AS SELECT id, window_start, sum(v) AS total
         FROM TUMBLE(big, ts, INTERVAL '1' MINUTE) GROUP BY id, window_start;",
        args.rows
    );
    client.execute(pb::ExecuteRequest { sql: setup }).await?;
    wait_finished(&mut client, "mv").await?;
    let mut flight = FlightSqlServiceClient::new(channel.clone());
    let mut times = Vec::new();
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        let info = flight.execute("SELECT * FROM mv".to_string(), None).await?;
        let mut rows = 0usize;
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.context("endpoint without a ticket")?;
            let batches: Vec<_> = flight.do_get(ticket).await?.try_collect().await?;
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        times.push(start.elapsed().as_secs_f64());
        if rows as u64 != args.rows {
            bail!("Flight SQL returned {rows} rows, expected {}", args.rows);
        }
    }
    println!(
        "Flight SQL SELECT * over a {}-row materialized view: median {:.3} s over {} runs",
        args.rows,
        median(&mut times),
        times.len()
    );

    // 2. Subscribe latency: one window per second from a paced generator.
    client
        .execute(pb::ExecuteRequest {
            sql: "CREATE SOURCE live (k BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
                  WITH (connector = 'generator', rows_per_second = 10000, 'fields.ts.start' = '2024-01-01T00:00:00Z', linger = '20ms');
                  CREATE MATERIALIZED VIEW per_second AS SELECT window_start, count(*) AS n
                  FROM TUMBLE(live, ts, INTERVAL '1' SECOND) GROUP BY window_start;"
                .into(),
        })
        .await?;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            target: Some(pb::subscribe_request::Target::Name("per_second".into())),
        })
        .await?
        .into_inner();
    let mut latencies = Vec::new();
    while latencies.len() < args.windows {
        let Some(msg) = stream.message().await? else {
            bail!("subscription ended early")
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
        latencies.push((now - msg.emitted_at_unix_nanos) as f64 / 1e6);
    }
    let max = latencies.iter().copied().fold(0.0, f64::max);
    println!(
        "Subscribe: {} windows, emission to client median {:.2} ms, max {:.2} ms",
        latencies.len(),
        median(&mut latencies),
        max
    );
    Ok(())
}
