//! The `nexmark` source: one of the three standard Nexmark benchmark streams (`person`,
//! `auction`, `bid`), generated deterministically from a seed, schema implied (DESIGN.md §2).
//!
//! Options: `table` (required), `events` (total events of all three kinds, event ids
//! `0..events`; unbounded if absent), `events_per_second` (event-time spacing, default 10,000),
//! `seed` (default 0) and `rows_per_second` (a wall-clock throttle; as fast as possible if
//! absent). Declared columns are a projection of the table's, with safe casts.

mod generator;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use self::generator::{NexmarkGenerator, Table};
use crate::error::{Error, Result};
use crate::generator::pace::Pacer;
use crate::options::Options;
use crate::schema_map::SchemaMap;
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "nexmark";
/// Default event-time spacing: 10,000 events per second of event time.
pub const DEFAULT_EVENTS_PER_SECOND: u64 = 10_000;
/// The densest event-time spacing: one event per nanosecond.
const MAX_EVENTS_PER_SECOND: u64 = 1_000_000_000;

/// A validated `nexmark` source.
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    table: Table,
    events: Option<u64>,
    events_per_second: u64,
    seed: u64,
    rows_per_second: Option<u64>,
    /// Indexes (in the table's schema) of the columns to generate, in the table's order.
    generated: Vec<usize>,
    /// The schema of the generated columns.
    generated_schema: SchemaRef,
    /// From the generated columns to the declared ones, when columns were declared.
    map: Option<SchemaMap>,
}

impl NexmarkConfig {
    /// Validates the options and the declared columns, if any (an empty declaration, such as
    /// one holding only a WATERMARK clause, counts as none).
    ///
    /// # Errors
    /// An option error naming the option or the column at fault.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let table = options
            .take_choice("table", &["bid", "auction", "person"])?
            .and_then(|name| Table::from_name(&name))
            .ok_or_else(|| {
                Error::option(
                    CONNECTOR,
                    "missing required option 'table' (bid, auction or person)",
                )
            })?;
        let events = options.take_u64("events")?;
        let events_per_second = options
            .take_u64("events_per_second")?
            .unwrap_or(DEFAULT_EVENTS_PER_SECOND);
        if !(1..=MAX_EVENTS_PER_SECOND).contains(&events_per_second) {
            return Err(Error::option(
                CONNECTOR,
                format!(
                    "option 'events_per_second' must be between 1 and {MAX_EVENTS_PER_SECOND}, got {events_per_second}"
                ),
            ));
        }
        let seed = options.take_u64("seed")?.unwrap_or(0);
        let rows_per_second = options.take_u64("rows_per_second")?;
        if rows_per_second == Some(0) {
            return Err(Error::option(
                CONNECTOR,
                "option 'rows_per_second' must be at least 1",
            ));
        }
        options.finish()?;

        let native = table.schema();
        let declared = declared.filter(|schema| !schema.fields().is_empty());
        let (generated, generated_schema, map): (Vec<usize>, SchemaRef, Option<SchemaMap>) =
            match declared {
                None => ((0..native.fields().len()).collect(), native, None),
                Some(declared) => {
                    // Validate against the whole table, so that errors list all its columns.
                    SchemaMap::try_new(CONNECTOR, &native, Some(&declared))?;
                    let mut generated: Vec<usize> = declared
                        .fields()
                        .iter()
                        .filter_map(|f| native.column_with_name(f.name()).map(|(i, _)| i))
                        .collect();
                    generated.sort_unstable();
                    generated.dedup();
                    let generated_schema: SchemaRef = Arc::new(native.project(&generated)?);
                    let map = SchemaMap::try_new(CONNECTOR, &generated_schema, Some(&declared))?;
                    (generated, generated_schema, Some(map))
                }
            };
        Ok(Self {
            table,
            events,
            events_per_second,
            seed,
            rows_per_second,
            generated,
            generated_schema,
            map,
        })
    }

    /// The event ids this source covers, `0..events`, or `None` when unbounded.
    pub fn events(&self) -> Option<u64> {
        self.events
    }
}

#[async_trait::async_trait]
impl SourceConfig for NexmarkConfig {
    fn schema(&self) -> SchemaRef {
        match &self.map {
            Some(map) => map.schema(),
            None => Arc::clone(&self.generated_schema),
        }
    }

    fn is_bounded(&self) -> bool {
        self.events.is_some()
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(NexmarkSource {
            generator: NexmarkGenerator::new(self.table, self.seed, self.events_per_second),
            table: self.table,
            events: self.events,
            generated: self.generated.clone(),
            generated_schema: Arc::clone(&self.generated_schema),
            map: self.map.clone(),
            pacer: Pacer::new(self.rows_per_second),
            ids: Vec::with_capacity(ctx.batch_size.min(1 << 20)),
            next_event: crate::generator::resume_counter(ctx.resume.as_ref(), "event")?,
            ctx,
        }))
    }
}

/// A running `nexmark` source: generates one batch of its table per call, from the next
/// event id on.
struct NexmarkSource {
    generator: NexmarkGenerator,
    table: Table,
    events: Option<u64>,
    generated: Vec<usize>,
    generated_schema: SchemaRef,
    map: Option<SchemaMap>,
    pacer: Pacer,
    ctx: SourceContext,
    /// The next event id to look at: all the source's state.
    next_event: u64,
    /// The event ids of the batch being built (kept to reuse the allocation).
    ids: Vec<u64>,
}

#[async_trait::async_trait]
impl Source for NexmarkSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let max_rows = self.pacer.batch_rows(self.ctx.batch_size, self.ctx.linger);
        self.ids.clear();
        // The position only advances once the batch is handed out (after pacing), so that a
        // caller giving up on this call (a stop) loses no event.
        let mut next_event = self.next_event;
        self.table
            .collect_ids(&mut next_event, self.events, max_rows, &mut self.ids);
        if self.ids.is_empty() {
            return Ok(None);
        }
        let columns = self
            .generated
            .iter()
            .map(|&c| self.generator.column(c, &self.ids))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.generated_schema), columns)?;
        let batch = match &self.map {
            Some(map) => map.apply(&batch)?,
            None => batch,
        };
        let rows = batch.num_rows();
        self.pacer.pace(rows).await;
        self.next_event = next_event;
        self.ctx
            .metrics
            .records
            .fetch_add(rows as u64, Ordering::Relaxed);
        Ok(Some(batch))
    }

    fn position(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "event": self.next_event }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::pace::test_context;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{
        DataType, Field, Int64Type, Schema, TimeUnit, TimestampMillisecondType,
    };

    fn options(kv: &[(&str, &str)]) -> Options {
        Options::new(
            CONNECTOR,
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    async fn collect(config: &NexmarkConfig, batch_size: usize) -> Vec<RecordBatch> {
        let mut source = config.open(test_context(batch_size)).await.unwrap();
        let mut batches = Vec::new();
        while let Some(batch) = source.next_batch().await.unwrap() {
            assert!(batch.num_rows() <= batch_size);
            batches.push(batch);
        }
        batches
    }

    fn rows(batches: &[RecordBatch]) -> usize {
        batches.iter().map(RecordBatch::num_rows).sum()
    }

    #[tokio::test]
    async fn same_seed_same_batches() {
        for table in ["bid", "auction", "person"] {
            let make = |seed: &str| {
                NexmarkConfig::try_new(
                    options(&[("table", table), ("events", "3000"), ("seed", seed)]),
                    None,
                )
                .unwrap()
            };
            let a = collect(&make("7"), 500).await;
            let b = collect(&make("7"), 500).await;
            assert_eq!(a, b, "{table}");
            let c = collect(&make("8"), 500).await;
            assert_ne!(a, c, "{table}");
        }
    }

    #[tokio::test]
    async fn proportions_follow_nexmark() {
        for (table, expected) in [
            ("bid", 5000 * 46 / 50),
            ("auction", 5000 * 3 / 50),
            ("person", 5000 / 50),
        ] {
            let config =
                NexmarkConfig::try_new(options(&[("table", table), ("events", "5000")]), None)
                    .unwrap();
            assert!(config.is_bounded());
            let batches = collect(&config, 1000).await;
            assert_eq!(rows(&batches), expected, "{table}");
        }
        let config =
            NexmarkConfig::try_new(options(&[("table", "auction"), ("events", "200")]), None)
                .unwrap();
        let batches = collect(&config, 1000).await;
        let ids: Vec<i64> = batches[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, (1000..1012).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn records_metric_counts_rows() {
        let config =
            NexmarkConfig::try_new(options(&[("table", "bid"), ("events", "1000")]), None).unwrap();
        let ctx = test_context(100);
        let metrics = Arc::clone(&ctx.metrics);
        let mut source = config.open(ctx).await.unwrap();
        while source.next_batch().await.unwrap().is_some() {}
        assert_eq!(metrics.records.load(Ordering::Relaxed), 920);
    }

    #[test]
    fn native_schemas() {
        let bid = NexmarkConfig::try_new(options(&[("table", "bid")]), None).unwrap();
        assert!(!bid.is_bounded());
        let names: Vec<String> = bid
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(
            names,
            [
                "auction",
                "bidder",
                "price",
                "channel",
                "url",
                "date_time",
                "extra"
            ]
        );
        assert_eq!(
            bid.schema().field(5).data_type(),
            &DataType::Timestamp(TimeUnit::Nanosecond, None)
        );
        let person = NexmarkConfig::try_new(options(&[("table", "PERSON")]), None).unwrap();
        assert_eq!(person.schema().fields().len(), 8);
        let auction = NexmarkConfig::try_new(options(&[("table", "auction")]), None).unwrap();
        assert_eq!(auction.schema().field(6).name(), "expires");
    }

    #[tokio::test]
    async fn declared_columns_project_and_cast() {
        let declared = Arc::new(Schema::new(vec![
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
            Field::new("price", DataType::Int64, true),
        ]));
        let config = NexmarkConfig::try_new(
            options(&[("table", "bid"), ("events", "100")]),
            Some(declared),
        )
        .unwrap();
        assert_eq!(config.schema().fields().len(), 2);
        let batches = collect(&config, 1000).await;
        assert_eq!(rows(&batches), 92);
        let batch = &batches[0];
        assert_eq!(batch.schema(), config.schema());
        let times = batch.column(0).as_primitive::<TimestampMillisecondType>();
        assert_eq!(times.value(0), 1_704_067_200_000);
        assert!(
            batch
                .column(1)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .all(|p| *p >= 100)
        );

        let full =
            NexmarkConfig::try_new(options(&[("table", "bid"), ("events", "100")]), None).unwrap();
        let full = collect(&full, 1000).await;
        assert_eq!(full[0].column(2).as_ref(), batch.column(1).as_ref());

        let bad = Arc::new(Schema::new(vec![Field::new(
            "prize",
            DataType::Int64,
            true,
        )]));
        let err = NexmarkConfig::try_new(options(&[("table", "bid")]), Some(bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'prize'"), "{err}");
        let bad = Arc::new(Schema::new(vec![Field::new(
            "price",
            DataType::Int32,
            true,
        )]));
        let err = NexmarkConfig::try_new(options(&[("table", "bid")]), Some(bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'price'"), "{err}");
        let empty = Arc::new(Schema::empty());
        let config = NexmarkConfig::try_new(options(&[("table", "bid")]), Some(empty)).unwrap();
        assert_eq!(config.schema().fields().len(), 7);
    }

    #[test]
    fn bad_options_are_named() {
        let err = NexmarkConfig::try_new(options(&[("table", "bid"), ("evnets", "10")]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'evnets'"), "{err}");
        let err = NexmarkConfig::try_new(options(&[("events", "10")]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'table'"), "{err}");
        let err = NexmarkConfig::try_new(options(&[("table", "bids")]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'table'"), "{err}");
        let err = NexmarkConfig::try_new(
            options(&[("table", "bid"), ("events_per_second", "0")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("'events_per_second'"), "{err}");
    }

    #[tokio::test]
    async fn rows_per_second_paces_small_batches() {
        let config = NexmarkConfig::try_new(
            options(&[
                ("table", "bid"),
                ("events", "100"),
                ("rows_per_second", "200"),
            ]),
            None,
        )
        .unwrap();
        let started = std::time::Instant::now();
        let batches = collect(&config, 8192).await;
        // 200 rows/s with a 100 ms linger: batches of 20 rows; 92 rows take about 0.45 s.
        assert!(batches.iter().all(|b| b.num_rows() <= 20));
        assert_eq!(rows(&batches), 92);
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert!(batches[0].column(0).len() == 20);
    }
}
