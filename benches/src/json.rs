//! JSON decoding alone: Sluice's JSON format (the simd-json fast path, with Arrow's decoder
//! behind it) against Arrow's JSON decoder as the JSON format used it before, over the very
//! same chunks of JSON bids in the same process. Both make the same batch (checked on the
//! first chunk); the ratio is the speed-up of the decode step that every JSON source runs.
//!
//! `cargo run --release -p sluice-benches --bin json-bench -- --events 2000000`

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::json::ReaderBuilder;
use arrow::record_batch::RecordBatch;
use clap::Parser;
use sluice_benches::bid;
use sluice_connectors::bad_records::{BadRecords, OnError};
use sluice_connectors::format::{JsonDecoder, RecordDecoder};
use sluice_connectors::metrics::ConnectorMetrics;

/// Sluice's JSON decoder against Arrow's over the same JSON lines.
#[derive(Debug, Parser)]
struct Args {
    /// JSON events decoded per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Events per chunk, as a source batches them.
    #[arg(long, default_value_t = 8192)]
    chunk: usize,
    /// Runs of each; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
}

fn schema(time: TimeUnit) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("bidder", DataType::Int64, true),
        Field::new("price", DataType::Int64, true),
        Field::new("channel", DataType::Utf8, true),
        Field::new("date_time", DataType::Timestamp(time, None), true),
    ]))
}

/// Arrow's decoder over one chunk, configured as the JSON format configures it: timestamps
/// read as milliseconds (the format then casts them to the declared unit).
fn arrow_decode(schema: &SchemaRef, chunk: &[u8], rows: usize) -> anyhow::Result<RecordBatch> {
    let mut decoder = ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(rows)
        .with_coerce_primitive(true)
        .build_decoder()?;
    decoder.decode(chunk)?;
    decoder.flush()?.context("no rows")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let chunk_rows = args.chunk.max(1);
    let chunks: Vec<Vec<u8>> = (0..args.events)
        .collect::<Vec<_>>()
        .chunks(chunk_rows)
        .map(|c| {
            c.iter()
                .flat_map(|&i| (bid(i as u64) + "\n").into_bytes())
                .collect()
        })
        .collect();
    let bytes: usize = chunks.iter().map(Vec::len).sum();
    let declared = schema(TimeUnit::Millisecond);
    let bad = BadRecords::new(OnError::Fail, Arc::new(ConnectorMetrics::default()));
    let mut sluice = JsonDecoder::try_new(&declared)?;

    let first = chunks.first().context("no events")?;
    let ours = sluice.decode(first, "bench", 1, &bad)?;
    let theirs = arrow_decode(&declared, first, chunk_rows)?;
    if ours != theirs {
        bail!("the two decoders disagree on the first chunk");
    }

    let (mut s, mut a) = (Vec::new(), Vec::new());
    for _ in 0..args.repeat.max(1) {
        let start = Instant::now();
        let mut rows = 0;
        for c in &chunks {
            rows += sluice.decode(c, "bench", 1, &bad)?.num_rows();
        }
        s.push(rows as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut rows = 0;
        for c in &chunks {
            rows += arrow_decode(&declared, c, chunk_rows)?.num_rows();
        }
        a.push(rows as f64 / start.elapsed().as_secs_f64());
    }
    let (s, a) = (median(&mut s), median(&mut a));
    println!(
        "{} JSON bids ({:.0} bytes each) in chunks of {chunk_rows}, one thread, median of {} runs",
        args.events,
        bytes as f64 / args.events as f64,
        args.repeat.max(1)
    );
    println!("{:<34} {:>12}", "", "events/s");
    println!("{:<34} {s:>12.0}", "sluice json format");
    println!("{:<34} {a:>12.0}", "arrow-json decoder (reference)");
    println!("sluice / arrow-json: {:.2}x", s / a);
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
