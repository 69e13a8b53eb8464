//! Kafka source throughput: JSON bids read from a local Kafka-protocol broker (tansu, as
//! installed by scripts/test) against the very same JSON lines read from a file, each
//! through a Sluice pipeline (`SELECT auction, price, date_time FROM bids`) on one tokio
//! thread. librdkafka fetches in its own background threads, as it does in production.
//!
//! `cargo run --release -p sluice-benches --bin kafka-bench -- --events 2000000`

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_engine::{Session, StatementOutput};

/// Kafka source against file source over the same JSON events.
#[derive(Debug, Parser)]
struct Args {
    /// JSON events produced and read.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Runs of each; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The tansu binary (default: where scripts/test installs it).
    #[arg(long)]
    tansu: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

fn bid(i: u64) -> String {
    format!(
        r#"{{"auction": {}, "bidder": {}, "price": {}, "channel": "channel-{}", "date_time": {}}}"#,
        i % 1000,
        (i * 7) % 10_007,
        (i * 7919) % 100_000,
        i % 10,
        1_704_067_200_000 + i
    )
}

/// Rows per second through `SELECT ... FROM bids` until `events` rows arrived.
async fn read(source: &str, events: u64) -> anyhow::Result<f64> {
    let mut session = Session::new();
    session.execute_script(source).await?;
    let start = Instant::now();
    let mut outputs = session
        .execute_script("SELECT auction, price, date_time FROM bids")
        .await?;
    let Some(StatementOutput::Stream { mut rows, .. }) = outputs.pop() else {
        bail!("not a continuous query")
    };
    let mut n = 0u64;
    while n < events {
        match rows.recv().await {
            Some(b) => n += b.num_rows() as u64,
            None => bail!("the stream ended after {n} of {events} rows"),
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(rows);
    session.shutdown().await?;
    Ok(rate)
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let tansu = args.tansu.clone().unwrap_or_else(|| {
        std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/sluice-tools/bin/tansu")
    });
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let dir = tempfile::tempdir()?;
    let mut broker = Command::new(&tansu)
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
        .with_context(|| {
            format!(
                "starting {} (run scripts/test to install it)",
                tansu.display()
            )
        })?;
    let result = run(&args, port, dir.path()).await;
    let _ = broker.kill();
    result
}

async fn run(args: &Args, port: u16, dir: &std::path::Path) -> anyhow::Result<()> {
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("tansu did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .create()?;
    for r in admin
        .create_topics(
            [&NewTopic::new("bids", 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("broker.address.family", "v4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()?;
    let path = dir.join("bids.json");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..args.events {
        let line = bid(i);
        writeln!(file, "{line}")?;
        let record = FutureRecord::<[u8], [u8]>::to("bids").payload(line.as_bytes());
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        if pending.len() >= 50_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    file.flush()?;
    drop(file);
    println!(
        "produced {} JSON bids in {:.1} s; one topic partition; one core for the pipeline \
         (current-thread runtime), librdkafka's fetch threads beside it; median of {} runs",
        args.events,
        started.elapsed().as_secs_f64(),
        args.repeat
    );
    let columns =
        "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP";
    let kafka = format!(
        "CREATE SOURCE bids ({columns}) WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = 'bids', format = 'json')"
    );
    let file = format!(
        "CREATE SOURCE bids ({columns}) WITH (connector = 'file', path = '{}', format = 'json')",
        path.display()
    );
    let (mut k, mut f) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        k.push(read(&kafka, args.events).await?);
        f.push(read(&file, args.events).await?);
    }
    let (k, f) = (median(&mut k), median(&mut f));
    println!("{:<28} {:>14.0} events/s", "kafka source (json)", k);
    println!("{:<28} {:>14.0} events/s", "file source (same json)", f);
    println!("kafka / file: {:.2}x", k / f);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}
