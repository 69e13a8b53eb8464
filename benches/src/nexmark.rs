//! The Nexmark benchmark: each query runs in Sluice (streaming, from the nexmark generator or
//! a Parquet file) and, over the very same rows, as a DataFusion batch query. It prints
//! events per second for both and their ratio. Everything runs on one tokio thread and
//! DataFusion uses one partition, so the figures are per core.
//!
//! `cargo run --release -p sluice-benches --bin nexmark -- --events 10000000`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_engine::{Session, StatementOutput};

/// Nexmark queries in Sluice against DataFusion batch over the same rows.
#[derive(Debug, Parser)]
struct Args {
    /// Nexmark events generated (bids are 46 of every 50).
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Run only the queries whose name contains this.
    #[arg(long)]
    only: Option<String>,
    /// Runs of each query; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Instead of the queries: the cost of checkpoints. A windowed aggregation over
    /// `--events` Nexmark events goes to a Parquet sink, alternately without checkpoints and
    /// with a checkpoint every this many seconds.
    #[arg(long)]
    checkpoint_every: Option<f64>,
}

struct Query {
    name: &'static str,
    /// The streaming query over `bids` (or `bids_parquet`).
    sluice: &'static str,
    /// The same query as batch SQL over a table `bids` holding the same rows.
    batch: &'static str,
    from_parquet: bool,
}

const QUERIES: &[Query] = &[
    Query {
        name: "q0 pass-through",
        sluice: "SELECT * FROM bids",
        batch: "SELECT * FROM bids",
        from_parquet: false,
    },
    Query {
        name: "q1 projection",
        sluice: "SELECT auction, bidder, price * 0.908 AS price_eur, date_time FROM bids",
        batch: "SELECT auction, bidder, price * 0.908 AS price_eur, date_time FROM bids",
        from_parquet: false,
    },
    Query {
        name: "q2 filter",
        sluice: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
        batch: "SELECT auction, price FROM bids WHERE auction % 123 = 0",
        from_parquet: false,
    },
    Query {
        name: "q5 HOP count per auction",
        sluice: "SELECT auction, window_start, window_end, count(*) AS n FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start, window_end",
        batch: "SELECT auction, ws, ws + INTERVAL '10' SECOND, count(*) AS n FROM (SELECT auction, unnest(generate_series(date_bin(INTERVAL '2' SECOND, date_time, TIMESTAMP '1970-01-01') - INTERVAL '8' SECOND, date_bin(INTERVAL '2' SECOND, date_time, TIMESTAMP '1970-01-01'), INTERVAL '2' SECOND)) AS ws FROM bids) GROUP BY auction, ws",
        from_parquet: false,
    },
    Query {
        name: "q7 TUMBLE max price",
        sluice: "SELECT window_start, window_end, max(price) AS top FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY window_start, window_end",
        batch: "SELECT ws, ws + INTERVAL '10' SECOND, max(price) AS top FROM (SELECT price, date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01') AS ws FROM bids) GROUP BY ws",
        from_parquet: false,
    },
    Query {
        name: "TUMBLE 1000 keys from Parquet",
        sluice: "SELECT auction % 1000 AS k, window_start, count(*) AS n, sum(price) AS total FROM TUMBLE(bids, date_time, INTERVAL '10' SECOND) GROUP BY auction % 1000, window_start",
        batch: "SELECT auction % 1000 AS k, ws, count(*) AS n, sum(price) AS total FROM (SELECT auction, price, date_bin(INTERVAL '10' SECOND, date_time, TIMESTAMP '1970-01-01') AS ws FROM bids) GROUP BY auction % 1000, ws",
        from_parquet: true,
    },
];

async fn run_stream(session: &mut Session, sql: &str) -> anyhow::Result<(usize, Vec<RecordBatch>)> {
    let mut outputs = session.execute_script(sql).await?;
    let Some(StatementOutput::Stream { mut rows, .. }) = outputs.pop() else {
        bail!("'{sql}' is not a continuous query")
    };
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(b) = rows.recv().await {
        n += b.num_rows();
        out.push(b);
    }
    session.wait_bounded().await?;
    Ok((n, out))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

/// Throughput of one sink pipeline, with or without checkpoints, and how many checkpoints
/// it completed.
async fn sink_run(
    events: u64,
    checkpoints: Option<std::time::Duration>,
) -> anyhow::Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let mut session = Session::new();
    if let Some(interval) = checkpoints {
        let root = dir.path().join("data");
        session.enable_checkpoints(sluice_engine::checkpoint::CheckpointConfig::for_root(
            &root.to_string_lossy(),
            interval,
            3,
        )?);
    }
    let script = format!(
        "CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', table = 'bid', events = {events}, seed = 1);
         CREATE SINK out WITH (connector = 'parquet', path = '{}') AS
         SELECT auction % 1000 AS k, window_start, window_end, count(*) AS n, sum(price) AS total, max(price) AS top
         FROM HOP(bids, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
         GROUP BY auction % 1000, window_start, window_end",
        dir.path().join("out").display()
    );
    let start = Instant::now();
    session.execute_script(&script).await?;
    session.wait_bounded().await?;
    let secs = start.elapsed().as_secs_f64();
    let completed = session
        .pipelines()
        .iter()
        .filter_map(|p| p.checkpoints.as_ref())
        .map(|m| m.completed.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    Ok((events as f64 * 0.92 / secs, completed))
}

async fn checkpoint_bench(args: &Args, every: f64) -> anyhow::Result<()> {
    let interval = std::time::Duration::from_secs_f64(every);
    println!(
        "checkpoint cost: HOP(2 s, 10 s) over 1000 keys into Parquet, {} events, one core, median of {} runs each",
        args.events, args.repeat
    );
    let (mut off, mut on, mut taken) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        off.push(sink_run(args.events, None).await?.0);
        let (rate, completed) = sink_run(args.events, Some(interval)).await?;
        on.push(rate);
        taken.push(completed);
    }
    let (off, on) = (median(&mut off), median(&mut on));
    println!("{:<40} {:>14.0} bids/s", "without checkpoints", off);
    println!(
        "{:<40} {:>14.0} bids/s  ({:?} checkpoints per run, incl. the last)",
        format!("checkpoint every {every} s"),
        on,
        taken
    );
    println!("overhead: {:.1}%", (1.0 - on / off) * 100.0);
    Ok(())
}

async fn bench(args: Args) -> anyhow::Result<()> {
    if let Some(every) = args.checkpoint_every {
        return checkpoint_bench(&args, every).await;
    }
    let dir = tempfile::tempdir()?;
    let nexmark = format!(
        "CREATE SOURCE bids (WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'nexmark', table = 'bid', events = {}, seed = 1)",
        args.events
    );
    // The rows every batch query reads: exactly what the generator produces.
    let mut session = Session::new();
    session.execute_script(&nexmark).await?;
    let (bids, rows) = run_stream(&mut session, "SELECT * FROM bids").await?;
    let parquet_path = dir.path().join("bids.parquet");
    write_parquet(&parquet_path, &rows)?;
    let parquet_source = format!(
        "CREATE SOURCE bids (auction BIGINT, price BIGINT, date_time TIMESTAMP, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (connector = 'file', path = '{}', format = 'parquet')",
        parquet_path.display()
    );
    println!(
        "{bids} bids from {} Nexmark events; one core (current-thread runtime, 1 DataFusion partition); median of {} runs",
        args.events, args.repeat
    );
    println!(
        "{:<32} {:>14} {:>14} {:>8} {:>10}",
        "query", "sluice ev/s", "datafusion ev/s", "ratio", "out rows"
    );
    for q in QUERIES.iter().filter(|q| {
        args.only
            .as_ref()
            .is_none_or(|o| q.name.contains(o.as_str()))
    }) {
        let mut sluice_runs = Vec::new();
        let mut datafusion_runs = Vec::new();
        let mut out_rows = 0;
        for _ in 0..args.repeat.max(1) {
            let mut session = Session::new();
            session
                .execute_script(if q.from_parquet {
                    &parquet_source
                } else {
                    &nexmark
                })
                .await?;
            let start = Instant::now();
            out_rows = run_stream(&mut session, q.sluice)
                .await
                .with_context(|| q.name)?
                .0;
            sluice_runs.push(bids as f64 / start.elapsed().as_secs_f64());

            let ctx =
                SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
            let start = Instant::now();
            if q.from_parquet {
                ctx.register_parquet(
                    "bids",
                    parquet_path.to_string_lossy().as_ref(),
                    Default::default(),
                )
                .await?;
            } else {
                ctx.register_table(
                    "bids",
                    Arc::new(MemTable::try_new(rows[0].schema(), vec![rows.clone()])?),
                )?;
            }
            let batch_rows: usize = ctx
                .sql(q.batch)
                .await?
                .collect()
                .await?
                .iter()
                .map(|b| b.num_rows())
                .sum();
            datafusion_runs.push(bids as f64 / start.elapsed().as_secs_f64());
            if batch_rows != out_rows {
                bail!(
                    "{}: Sluice emitted {out_rows} rows, DataFusion {batch_rows}",
                    q.name
                );
            }
        }
        let (sluice, datafusion) = (median(&mut sluice_runs), median(&mut datafusion_runs));
        println!(
            "{:<32} {:>14.0} {:>14.0} {:>7.2}x {:>10}",
            q.name,
            sluice,
            datafusion,
            sluice / datafusion,
            out_rows
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn write_parquet(path: &std::path::Path, rows: &[RecordBatch]) -> anyhow::Result<()> {
    let file = std::fs::File::create(path)?;
    let schema = rows
        .first()
        .map(|b| b.schema())
        .context("no rows generated")?;
    let keep: Vec<usize> = ["auction", "price", "date_time"]
        .iter()
        .map(|c| schema.index_of(c))
        .collect::<Result<_, _>>()?;
    let projected = Arc::new(schema.project(&keep)?);
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, projected, None)?;
    for b in rows {
        writer.write(&b.project(&keep)?)?;
    }
    writer.close()?;
    Ok(())
}
