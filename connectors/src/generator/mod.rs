//! The `generator` source: rows made up for the declared columns, each column a sequence or
//! random values, deterministic for a seed (DESIGN.md §2). Also home of what the generating
//! sources share: stateless hashing ([`hash`]) and wall-clock pacing ([`pace`]).
//!
//! Options: `rows` (total; unbounded if absent), `rows_per_second` (as fast as possible if
//! absent), `seed` (default 0), and per column `fields.<column>.<property>`:
//!
//! | column type | `kind` (default first) | properties |
//! |---|---|---|
//! | integers | `sequence`, `random` | `start`, `end` (a sequence cycles after `end`) |
//! | floats | `random`, `sequence` | `start`, `end` (random: `[start, end)`, default `[0, 1)`) |
//! | BOOLEAN | `random`, `sequence` | |
//! | VARCHAR | `random`, `sequence` | random: `length` (default 10) or `values` (comma-separated); sequence: `start`, `end` |
//! | TIMESTAMP | `event_time`, `random` | event_time: `start`, `interval_ms`, `max_disorder_ms`; random: `start`, `end` |
//! | DATE | `random`, `sequence` | `start`, `end` (dates or days since 1970-01-01) |
//!
//! An `event_time` column gives row `i` the time `start + i * interval_ms`, moved back by a
//! random `[0, max_disorder_ms]`; `start` is an ISO-8601 timestamp or epoch milliseconds
//! (default 2024-01-01T00:00:00Z) and `interval_ms` defaults to `1000 / rows_per_second`
//! (1 without a rate). Every random value is a hash of (seed, row, column), so any row can be
//! produced on its own.

mod column;
pub(crate) mod hash;
pub(crate) mod pace;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use self::column::{Column, NANOS_PER_MILLI, PROPERTIES, Props};
use self::pace::Pacer;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "generator";

/// A validated `generator` source.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    schema: SchemaRef,
    rows: Option<u64>,
    rows_per_second: Option<u64>,
    seed: u64,
    /// How each declared column is made, in schema order.
    columns: Vec<Column>,
}

impl GeneratorConfig {
    /// Validates the options against the declared columns, which are required.
    ///
    /// # Errors
    /// An option error naming the option or the column at fault: no columns, an unknown
    /// option or column property, a value of the wrong type, or a column type the generator
    /// cannot produce.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let schema = declared
            .filter(|schema| !schema.fields().is_empty())
            .ok_or_else(|| {
                Error::option(CONNECTOR, "the generator connector needs a column list")
            })?;
        let rows = options.take_u64("rows")?;
        let rows_per_second = options.take_u64("rows_per_second")?;
        if rows_per_second == Some(0) {
            return Err(Error::option(
                CONNECTOR,
                "option 'rows_per_second' must be at least 1",
            ));
        }
        let seed = options.take_u64("seed")?.unwrap_or(0);

        let mut props: Vec<Props> = schema.fields().iter().map(|f| Props::new(f)).collect();
        for (key, value) in options.take_prefixed("fields.") {
            let Some((column, property)) = key
                .strip_prefix("fields.")
                .and_then(|rest| rest.rsplit_once('.'))
            else {
                return Err(Error::option(
                    CONNECTOR,
                    format!("option '{key}' must be spelled fields.<column>.<property>"),
                ));
            };
            if !PROPERTIES.contains(&property) {
                return Err(Error::option(
                    CONNECTOR,
                    format!(
                        "unknown option '{key}': a column property is one of {}",
                        PROPERTIES.join(", ")
                    ),
                ));
            }
            let Some(index) = schema
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(column))
            else {
                return Err(Error::option(
                    CONNECTOR,
                    format!("option '{key}' names '{column}', which is not a declared column"),
                ));
            };
            if let Some(p) = props.get_mut(index) {
                p.values.insert(property.to_string(), value);
            }
        }
        options.finish()?;

        let default_interval_ns = match rows_per_second {
            Some(rate) => i64::try_from(1_000_000_000 / rate)
                .unwrap_or(i64::MAX)
                .max(1),
            None => NANOS_PER_MILLI,
        };
        let columns = props
            .into_iter()
            .map(|p| Column::try_new(p, default_interval_ns))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            schema,
            rows,
            rows_per_second,
            seed,
            columns,
        })
    }
}

#[async_trait::async_trait]
impl SourceConfig for GeneratorConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        self.rows.is_some()
    }

    fn max_row_bytes(&self) -> Option<u64> {
        Some(self.columns.iter().map(Column::max_value_bytes).sum())
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(GeneratorSource {
            pacer: Pacer::new(self.rows_per_second),
            config: self.clone(),
            next_row: resume_counter(ctx.resume.as_ref(), "row")?,
            ctx,
        }))
    }
}

/// A running `generator` source: one batch of rows `next_row..` per call.
struct GeneratorSource {
    config: GeneratorConfig,
    ctx: SourceContext,
    pacer: Pacer,
    /// The index of the next row: all the source's state.
    next_row: u64,
}

#[async_trait::async_trait]
impl Source for GeneratorSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let max_rows = self.pacer.batch_rows(self.ctx.batch_size, self.ctx.linger);
        let rows = match self.config.rows {
            Some(total) => usize::try_from(total.saturating_sub(self.next_row))
                .unwrap_or(usize::MAX)
                .min(max_rows),
            None => max_rows,
        };
        if rows == 0 {
            return Ok(None);
        }
        let (seed, first) = (self.config.seed, self.next_row);
        let columns = self
            .config
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| column.build(seed, i as u64, first, rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&self.config.schema), columns)?;
        // Pace before moving on, so that a caller giving up on this call (a stop) loses no
        // row: the position only advances once the batch is handed out.
        self.pacer.pace(rows).await;
        self.next_row = first.saturating_add(rows as u64);
        self.ctx
            .metrics
            .records
            .fetch_add(rows as u64, Ordering::Relaxed);
        Ok(Some(batch))
    }

    fn position(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "row": self.next_row }))
    }
}

/// The counter `key` of a saved position, or 0 without one.
///
/// # Errors
/// When the position does not hold the counter.
pub(crate) fn resume_counter(resume: Option<&serde_json::Value>, key: &str) -> Result<u64> {
    match resume {
        None => Ok(0),
        Some(p) => p
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                crate::Error::Internal(format!("a checkpointed source position lacks '{key}': {p}"))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::pace::test_context;
    use crate::options::Options;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
    use datafusion::arrow::datatypes::{
        Float64Type, Int32Type, Int64Type, Schema, TimestampMillisecondType,
    };

    fn options(kv: &[(&str, &str)]) -> Options {
        Options::new(
            CONNECTOR,
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn schema(fields: Vec<(&str, DataType)>) -> Option<SchemaRef> {
        Some(Arc::new(Schema::new(
            fields
                .into_iter()
                .map(|(n, t)| Field::new(n, t, true))
                .collect::<Vec<_>>(),
        )))
    }

    fn all_types() -> Option<SchemaRef> {
        schema(vec![
            ("id", DataType::Int64),
            ("small", DataType::UInt8),
            ("name", DataType::Utf8),
            ("score", DataType::Float64),
            ("flag", DataType::Boolean),
            ("ts", DataType::Timestamp(TimeUnit::Millisecond, None)),
            (
                "utc",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            ),
            ("day", DataType::Date32),
            ("view", DataType::Utf8View),
        ])
    }

    async fn collect(config: &GeneratorConfig, batch_size: usize) -> Vec<RecordBatch> {
        let mut source = config.open(test_context(batch_size)).await.unwrap();
        let mut batches = Vec::new();
        while let Some(batch) = source.next_batch().await.unwrap() {
            assert_eq!(batch.schema(), config.schema());
            batches.push(batch);
        }
        batches
    }

    #[tokio::test]
    async fn same_seed_same_rows() {
        let make = |seed: &str| {
            GeneratorConfig::try_new(options(&[("rows", "1000"), ("seed", seed)]), all_types())
                .unwrap()
        };
        let a = collect(&make("3"), 300).await;
        let b = collect(&make("3"), 300).await;
        assert_eq!(a, b);
        let c = collect(&make("4"), 300).await;
        assert_ne!(a, c);
        // The same rows whatever the batch size: values depend only on the row index.
        let d = collect(&make("3"), 1000).await;
        let concat = datafusion::arrow::compute::concat_batches(&a[0].schema(), &a).unwrap();
        assert_eq!(concat, d[0]);
    }

    #[tokio::test]
    async fn bounded_rows_count() {
        let config = GeneratorConfig::try_new(options(&[("rows", "2500")]), all_types()).unwrap();
        assert!(config.is_bounded());
        let ctx = test_context(1000);
        let metrics = Arc::clone(&ctx.metrics);
        let mut source = config.open(ctx).await.unwrap();
        let mut sizes = Vec::new();
        while let Some(batch) = source.next_batch().await.unwrap() {
            sizes.push(batch.num_rows());
        }
        assert_eq!(sizes, [1000, 1000, 500]);
        assert!(source.next_batch().await.unwrap().is_none());
        assert_eq!(metrics.records.load(Ordering::Relaxed), 2500);
        let unbounded = GeneratorConfig::try_new(options(&[]), all_types()).unwrap();
        assert!(!unbounded.is_bounded());
        let batches = {
            let mut source = unbounded.open(test_context(64)).await.unwrap();
            source.next_batch().await.unwrap().unwrap()
        };
        assert_eq!(batches.num_rows(), 64);
    }

    #[tokio::test]
    async fn sequences_and_ranges() {
        let config = GeneratorConfig::try_new(
            options(&[
                ("rows", "10"),
                ("fields.id.start", "5"),
                ("fields.id.end", "7"),
                ("fields.n.kind", "random"),
                ("fields.n.start", "10"),
                ("fields.n.end", "12"),
                ("fields.s.kind", "sequence"),
                ("fields.s.start", "100"),
                ("fields.c.values", "red, green,blue"),
                ("fields.x.kind", "random"),
                ("fields.x.start", "-1"),
                ("fields.x.end", "1"),
            ]),
            schema(vec![
                ("id", DataType::Int64),
                ("n", DataType::Int32),
                ("s", DataType::Utf8),
                ("c", DataType::Utf8),
                ("x", DataType::Float64),
                ("plain", DataType::Int64),
            ]),
        )
        .unwrap();
        let batch = &collect(&config, 100).await[0];
        let ids: Vec<i64> = batch
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, [5, 6, 7, 5, 6, 7, 5, 6, 7, 5]);
        let n = batch.column(1).as_primitive::<Int32Type>();
        assert!(n.values().iter().all(|v| (10..=12).contains(v)));
        let s: Vec<&str> = batch
            .column(2)
            .as_string::<i32>()
            .iter()
            .flatten()
            .collect();
        assert_eq!(s[..3], ["100", "101", "102"]);
        let c = batch.column(3).as_string::<i32>();
        assert!(
            c.iter()
                .flatten()
                .all(|v| ["red", "green", "blue"].contains(&v))
        );
        let x = batch.column(4).as_primitive::<Float64Type>();
        assert!(x.values().iter().all(|v| (-1.0..1.0).contains(v)));
        let plain: Vec<i64> = batch
            .column(5)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(plain, (0..10).collect::<Vec<i64>>());
    }

    #[tokio::test]
    async fn random_strings_have_the_length() {
        let config = GeneratorConfig::try_new(
            options(&[("rows", "50"), ("fields.s.length", "13")]),
            schema(vec![("s", DataType::Utf8)]),
        )
        .unwrap();
        let batch = &collect(&config, 100).await[0];
        let s = batch.column(0).as_string::<i32>();
        assert!(
            s.iter()
                .flatten()
                .all(|v| v.len() == 13 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
        );
        assert_ne!(s.value(0), s.value(1));
    }

    #[tokio::test]
    async fn event_time_columns() {
        let declared = schema(vec![(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
        )]);
        let config = GeneratorConfig::try_new(
            options(&[
                ("rows", "100"),
                ("fields.ts.start", "2024-01-01T00:00:00Z"),
                ("fields.ts.interval_ms", "1000"),
            ]),
            declared.clone(),
        )
        .unwrap();
        let batch = &collect(&config, 1000).await[0];
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        for (i, v) in ts.values().iter().enumerate() {
            assert_eq!(*v, 1_704_067_200_000 + 1000 * i as i64);
        }
        let config = GeneratorConfig::try_new(
            options(&[
                ("rows", "100"),
                ("fields.ts.start", "1704067200000"),
                ("fields.ts.max_disorder_ms", "500"),
            ]),
            declared,
        )
        .unwrap();
        let batch = &collect(&config, 1000).await[0];
        let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
        let mut moved = 0;
        for (i, v) in ts.values().iter().enumerate() {
            let expected = 1_704_067_200_000 + i as i64;
            assert!(*v <= expected && *v >= expected - 500, "{v} {expected}");
            moved += usize::from(*v != expected);
        }
        assert!(moved > 50);
    }

    #[test]
    fn bad_options_are_named() {
        let declared = schema(vec![
            ("id", DataType::Int64),
            ("ts", DataType::Timestamp(TimeUnit::Nanosecond, None)),
        ]);
        let err_of = |kv: &[(&str, &str)]| {
            GeneratorConfig::try_new(options(kv), declared.clone())
                .unwrap_err()
                .to_string()
        };
        assert!(err_of(&[("fields.id.stat", "1")]).contains("'fields.id.stat'"));
        assert!(err_of(&[("fields.nope.kind", "random")]).contains("'fields.nope.kind'"));
        assert!(err_of(&[("fields.id.length", "3")]).contains("'fields.id.length'"));
        assert!(err_of(&[("fields.id.kind", "event_time")]).contains("'fields.id.kind'"));
        assert!(err_of(&[("fields.id.start", "abc")]).contains("'fields.id.start'"));
        assert!(
            err_of(&[("fields.id.start", "9"), ("fields.id.end", "3")]).contains("'fields.id.end'")
        );
        assert!(err_of(&[("fields.ts.start", "yesterday")]).contains("'fields.ts.start'"));
        assert!(err_of(&[("fields.ts.interval_ms", "-1")]).contains("'fields.ts.interval_ms'"));
        assert!(err_of(&[("fields", "x")]).contains("'fields'"));
        assert!(err_of(&[("rowz", "10")]).contains("'rowz'"));

        let err = GeneratorConfig::try_new(options(&[]), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a column list"), "{err}");
        let err = GeneratorConfig::try_new(options(&[]), schema(vec![("b", DataType::Binary)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'b'"), "{err}");
        let small = schema(vec![("s", DataType::Int8)]);
        let err = GeneratorConfig::try_new(options(&[("fields.s.end", "300")]), small)
            .unwrap_err()
            .to_string();
        assert!(err.contains("'fields.s.end'"), "{err}");
    }

    #[test]
    fn column_names_match_case_insensitively() {
        let declared = schema(vec![("UserId", DataType::Int64)]);
        let config =
            GeneratorConfig::try_new(options(&[("fields.userid.start", "42")]), declared).unwrap();
        assert_eq!(config.schema().field(0).name(), "UserId");
        let array = config.columns[0].build(0, 0, 0, 3).unwrap();
        assert_eq!(
            array.as_primitive::<Int64Type>().values().to_vec(),
            [42, 43, 44]
        );
        assert_eq!(array.len(), 3);
    }
}
