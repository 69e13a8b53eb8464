//! Kafka source throughput: JSON bids read from a local Kafka-protocol broker (tansu, as
//! installed by scripts/test) against the very same JSON lines read from a file, each
//! through a Sluice pipeline (`SELECT auction, price, date_time FROM bids`) on one tokio
//! thread. librdkafka fetches in its own background threads, as it does in production.
//!
//! Besides events per second of wall time, it reports events per CPU second of the Sluice
//! process (all its threads: the pipeline's and librdkafka's), read from `/proc`: the broker
//! runs on the same two cores, so wall time also measures the broker, and CPU time is what
//! "per core" means for Sluice itself.
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
use sluice_benches::bid;
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
    /// Partitions of the topic (read by the one source task).
    #[arg(long, default_value_t = 1)]
    partitions: i32,
    /// The producer's `compression.type`: none, lz4, snappy or gzip (librdkafka is built
    /// without zstd). The broker keeps record batches as produced, so the consumer fetches
    /// them compressed.
    #[arg(long, default_value = "none")]
    compression: String,
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

/// CPU time a process used so far (user and system, all threads), from `/proc/<pid>/stat`.
fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

/// Clock ticks per second of `/proc` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One read: events per second of wall time, and per CPU second of this process and of the
/// broker; from the start (opening the source included), and in the steady state from the
/// first batch on.
#[derive(Debug, Clone, Copy)]
struct Rate {
    wall: f64,
    per_cpu: f64,
    steady_wall: f64,
    steady_per_cpu: f64,
    broker_cpu: f64,
}

/// Rows per second through `SELECT ... FROM bids` until `events` rows arrived.
async fn read(source: &str, events: u64, broker: &str) -> anyhow::Result<Rate> {
    let mut session = Session::new();
    session.execute_script(source).await?;
    let (cpu0, broker0) = (cpu_seconds("self")?, cpu_seconds(broker)?);
    let start = Instant::now();
    let mut outputs = session
        .execute_script("SELECT auction, price, date_time FROM bids")
        .await?;
    let Some(StatementOutput::Stream { mut rows, .. }) = outputs.pop() else {
        bail!("not a continuous query")
    };
    let mut n = 0u64;
    // After the first batch: (rows then, when, CPU seconds then).
    let mut first: Option<(u64, Instant, f64)> = None;
    while n < events {
        match rows.recv().await {
            Some(b) => n += b.num_rows() as u64,
            None => bail!("the stream ended after {n} of {events} rows"),
        }
        if first.is_none() {
            first = Some((n, Instant::now(), cpu_seconds("self")?));
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu_now = cpu_seconds("self")?;
    let (cpu, broker_cpu) = (cpu_now - cpu0, cpu_seconds(broker)? - broker0);
    let (n1, t1, cpu1) = first.unwrap_or((0, start, cpu0));
    let steady = (n - n1) as f64;
    drop(rows);
    session.shutdown().await?;
    Ok(Rate {
        wall: n as f64 / wall,
        per_cpu: n as f64 / cpu.max(0.01),
        steady_wall: steady / t1.elapsed().as_secs_f64().max(1e-3),
        steady_per_cpu: steady / (cpu_now - cpu1).max(0.01),
        broker_cpu: broker_cpu / wall,
    })
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
    let result = run(&args, port, dir.path(), &broker.id().to_string()).await;
    let _ = broker.kill();
    result
}

async fn run(args: &Args, port: u16, dir: &std::path::Path, broker: &str) -> anyhow::Result<()> {
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
            [&NewTopic::new(
                "bids",
                args.partitions,
                TopicReplication::Fixed(1),
            )],
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
        .set("compression.type", &args.compression)
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
    // Its threads would count as the reader's CPU time.
    drop(producer);
    drop(admin);
    println!(
        "produced {} JSON bids in {:.1} s; {} topic partition(s), compression {}; one core for \
         the pipeline (current-thread runtime), librdkafka's fetch threads beside it; median \
         of {} runs",
        args.events,
        started.elapsed().as_secs_f64(),
        args.partitions,
        args.compression,
        args.repeat
    );
    let columns =
        "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, date_time TIMESTAMP";
    // librdkafka settings to try, as `properties.<name> = '<value>'` pairs.
    let extra = std::env::var("KAFKA_BENCH_PROPERTIES")
        .map(|p| format!(", {p}"))
        .unwrap_or_default();
    let kafka = format!(
        "CREATE SOURCE bids ({columns}) WITH (connector = 'kafka', bootstrap_servers = '{bootstrap}', topic = 'bids', format = 'json'{extra})"
    );
    let file = format!(
        "CREATE SOURCE bids ({columns}) WITH (connector = 'file', path = '{}', format = 'json')",
        path.display()
    );
    let (mut k, mut f) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        k.push(read(&kafka, args.events, broker).await?);
        f.push(read(&file, args.events, broker).await?);
    }
    let (k, f) = (median(&mut k), median(&mut f));
    println!(
        "{:<26} {:>12} {:>14} {:>14} {:>14} {:>11}",
        "", "events/s", "per CPU-s", "steady ev/s", "steady/CPU-s", "broker CPU"
    );
    for (name, r) in [("kafka source (json)", k), ("file source (same json)", f)] {
        println!(
            "{name:<26} {:>12.0} {:>14.0} {:>14.0} {:>14.0} {:>10.0}%",
            r.wall,
            r.per_cpu,
            r.steady_wall,
            r.steady_per_cpu,
            r.broker_cpu * 100.0
        );
    }
    println!(
        "kafka / file: {:.2}x of wall time, {:.2}x per CPU second; steady state {:.2}x and {:.2}x",
        k.wall / f.wall,
        k.per_cpu / f.per_cpu,
        k.steady_wall / f.steady_wall,
        k.steady_per_cpu / f.steady_per_cpu
    );
    Ok(())
}

/// The run with the median wall-time rate.
fn median(v: &mut [Rate]) -> Rate {
    v.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    v[v.len() / 2]
}
