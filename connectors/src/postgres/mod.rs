//! The `postgres` sink, on tokio-postgres: batched writes with `INSERT ... SELECT * FROM
//! UNNEST($1, $2, ...)` (one prepared statement, one round trip per batch), upserts with
//! `ON CONFLICT (primary_key) DO UPDATE` when `primary_key` is given, and retries with
//! backoff (reconnecting when the connection broke) when a batch fails.
//!
//! With a primary key the sink also takes updating queries (a `GROUP BY` without a window):
//! the table keeps the latest row per key. Replaying rows after a crash rewrites the same
//! rows, so with a primary key the table ends up as if every row was written once.
//!
//! Options: `url` (`postgres://user@host:port/db`), `table`, `primary_key` (comma-separated
//! columns). The table is created when it does not exist.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, SchemaRef, TimeUnit, TimestampNanosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{Error, Result};
use crate::metrics::ConnectorMetrics;
use crate::options::Options;
use crate::sink::{Precommit, Sink, SinkConfig, SinkContext, UpdateKey};

const CONNECTOR: &str = "postgres";
/// Attempts per batch before the pipeline fails.
const ATTEMPTS: u32 = 6;

/// A validated `postgres` sink.
#[derive(Debug, Clone)]
pub struct PostgresSinkConfig {
    url: String,
    table: String,
    primary_key: Vec<String>,
}

impl PostgresSinkConfig {
    /// Validates the options of a `postgres` sink.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing or unknown option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let url = options.require_string("url")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::option(
                CONNECTOR,
                format!("option 'url' must be a postgres:// URL, got '{url}'"),
            ));
        }
        let table = options.require_string("table")?;
        let primary_key = options.take_list("primary_key");
        options.finish()?;
        Ok(Self {
            url,
            table,
            primary_key,
        })
    }
}

#[async_trait::async_trait]
impl SinkConfig for PostgresSinkConfig {
    fn append_only(&self) -> bool {
        self.primary_key.is_empty()
    }

    async fn open(&self, schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(
            PostgresSink::open(self.clone(), schema, ctx.update_key.as_ref(), ctx.metrics).await?,
        ))
    }
}

/// How a column goes over the wire.
#[derive(Debug, Clone, Copy)]
enum PgType {
    Int8,
    Float8,
    Text,
    Bool,
    Timestamp,
}

impl PgType {
    fn of(dt: &DataType) -> Option<Self> {
        Some(match dt {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => PgType::Int8,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => PgType::Float8,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PgType::Text,
            DataType::Boolean => PgType::Bool,
            DataType::Timestamp(_, None) => PgType::Timestamp,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            PgType::Int8 => "BIGINT",
            PgType::Float8 => "DOUBLE PRECISION",
            PgType::Text => "TEXT",
            PgType::Bool => "BOOLEAN",
            PgType::Timestamp => "TIMESTAMP",
        }
    }

    fn array(self) -> &'static str {
        match self {
            PgType::Int8 => "int8[]",
            PgType::Float8 => "float8[]",
            PgType::Text => "text[]",
            PgType::Bool => "bool[]",
            PgType::Timestamp => "timestamp[]",
        }
    }
}

/// A running `postgres` sink.
struct PostgresSink {
    config: PostgresSinkConfig,
    columns: Vec<(String, PgType)>,
    key_columns: Vec<usize>,
    client: Option<(Client, Statement)>,
    metrics: Arc<ConnectorMetrics>,
}

/// Quotes an identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl PostgresSink {
    /// # Errors
    /// A column type the sink cannot write, a `primary_key` that is not in the input or,
    /// for an updating query, is not its group keys (`update_key`): upserts on another key
    /// would pile up stale rows or fail on duplicates.
    async fn open(
        config: PostgresSinkConfig,
        schema: SchemaRef,
        update_key: Option<&UpdateKey>,
        metrics: Arc<ConnectorMetrics>,
    ) -> Result<Self> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
                PgType::of(f.data_type())
                    .map(|t| (f.name().clone(), t))
                    .ok_or_else(|| {
                        Error::option(
                            CONNECTOR,
                            format!(
                                "column '{}' has type {}, which the postgres sink cannot write",
                                f.name(),
                                f.data_type()
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let key_columns = config
            .primary_key
            .iter()
            .map(|k| {
                columns
                    .iter()
                    .position(|(c, _)| c.eq_ignore_ascii_case(k))
                    .ok_or_else(|| {
                        Error::option(
                            CONNECTOR,
                            format!("primary_key column '{k}' is not in the sink's input"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        if update_key == Some(&UpdateKey::NotInOutput) {
            return Err(Error::option(
                CONNECTOR,
                "to upsert an updating query on primary_key, select its GROUP BY columns as they are",
            ));
        }
        if let Some(UpdateKey::Columns(keys)) = update_key {
            let mut want: Vec<usize> = keys.clone();
            let mut got = key_columns.clone();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                let names = |idx: &[usize]| {
                    idx.iter()
                        .filter_map(|i| columns.get(*i).map(|(c, _)| format!("'{c}'")))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(Error::option(
                    CONNECTOR,
                    format!(
                        "primary_key must be the query's GROUP BY columns ({}), not ({})",
                        names(&want),
                        names(&got)
                    ),
                ));
            }
        }
        let mut sink = Self {
            config,
            columns,
            key_columns,
            client: None,
            metrics,
        };
        sink.connect().await?;
        Ok(sink)
    }

    /// Connects, creates the table if needed and prepares the write statement.
    async fn connect(&mut self) -> Result<()> {
        let (client, connection) = tokio_postgres::connect(&self.config.url, NoTls)
            .await
            .map_err(pg_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "postgres connection closed");
            }
        });
        let table = ident(&self.config.table);
        let mut create: Vec<String> = self
            .columns
            .iter()
            .map(|(c, t)| format!("{} {}", ident(c), t.sql()))
            .collect();
        if !self.key_columns.is_empty() {
            let keys: Vec<String> = self
                .key_columns
                .iter()
                .map(|&k| ident(&self.columns[k].0))
                .collect();
            create.push(format!("PRIMARY KEY ({})", keys.join(", ")));
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} ({})",
                create.join(", ")
            ))
            .await
            .map_err(pg_error)?;
        let names: Vec<String> = self.columns.iter().map(|(c, _)| ident(c)).collect();
        let unnest: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (_, t))| format!("${}::{}", i + 1, t.array()))
            .collect();
        let mut sql = format!(
            "INSERT INTO {table} ({}) SELECT * FROM UNNEST({})",
            names.join(", "),
            unnest.join(", ")
        );
        if !self.key_columns.is_empty() {
            let keys: Vec<String> = self
                .key_columns
                .iter()
                .map(|&k| ident(&self.columns[k].0))
                .collect();
            let updates: Vec<String> = (0..self.columns.len())
                .filter(|i| !self.key_columns.contains(i))
                .map(|i| {
                    let c = ident(&self.columns[i].0);
                    format!("{c} = EXCLUDED.{c}")
                })
                .collect();
            if updates.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({}) DO NOTHING", keys.join(", ")));
            } else {
                sql.push_str(&format!(
                    " ON CONFLICT ({}) DO UPDATE SET {}",
                    keys.join(", "),
                    updates.join(", ")
                ));
            }
        }
        let statement = client.prepare(&sql).await.map_err(pg_error)?;
        self.client = Some((client, statement));
        Ok(())
    }

    /// The rows to write: with a primary key, the last row of each key only (Postgres
    /// rejects an upsert that touches a row twice).
    fn dedup(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        if self.key_columns.is_empty() || batch.num_rows() < 2 {
            return Ok(batch.clone());
        }
        let options = FormatOptions::default();
        let formatters = self
            .key_columns
            .iter()
            .map(|&k| ArrayFormatter::try_new(batch.column(k).as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut last = std::collections::HashMap::new();
        for row in 0..batch.num_rows() {
            let key: Vec<String> = formatters
                .iter()
                .map(|f| f.value(row).to_string())
                .collect();
            last.insert(key, row);
        }
        if last.len() == batch.num_rows() {
            return Ok(batch.clone());
        }
        let mut keep: Vec<u32> = last.into_values().map(|r| r as u32).collect();
        keep.sort_unstable();
        Ok(datafusion::arrow::compute::take_record_batch(
            batch,
            &datafusion::arrow::array::UInt32Array::from(keep),
        )?)
    }

    /// The batch's columns as Postgres arrays.
    fn parameters(&self, batch: &RecordBatch) -> Result<Vec<Box<dyn ToSql + Sync + Send>>> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, (_, t))| {
                let col = batch.column(i);
                let p: Box<dyn ToSql + Sync + Send> = match t {
                    PgType::Int8 => {
                        let a = cast(col, &DataType::Int64)?;
                        Box::new(a.as_primitive::<Int64Type>().iter().collect::<Vec<_>>())
                    }
                    PgType::Float8 => {
                        let a = cast(col, &DataType::Float64)?;
                        Box::new(a.as_primitive::<Float64Type>().iter().collect::<Vec<_>>())
                    }
                    PgType::Text => {
                        let a = cast(col, &DataType::Utf8)?;
                        Box::new(
                            a.as_string::<i32>()
                                .iter()
                                .map(|s| s.map(str::to_string))
                                .collect::<Vec<_>>(),
                        )
                    }
                    PgType::Bool => Box::new(col.as_boolean().iter().collect::<Vec<_>>()),
                    PgType::Timestamp => {
                        let a = cast(col, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
                        Box::new(
                            a.as_primitive::<TimestampNanosecondType>()
                                .iter()
                                .map(|v| v.map(system_time))
                                .collect::<Vec<_>>(),
                        )
                    }
                };
                Ok(p)
            })
            .collect()
    }

    /// Writes a batch, retrying with backoff and reconnecting when the connection broke.
    async fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let batch = self.dedup(batch)?;
        let params = self.parameters(&batch)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            if self.client.as_ref().is_none_or(|(c, _)| c.is_closed())
                && let Err(e) = self.connect().await
            {
                if attempt == ATTEMPTS {
                    return Err(e);
                }
                self.metrics.error();
                tracing::warn!(table = %self.config.table, attempt, error = %e, "postgres unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                continue;
            }
            let Some((client, statement)) = self.client.as_ref() else {
                continue;
            };
            match client.execute(statement, &refs).await {
                Ok(_) => return Ok(()),
                Err(e) if attempt < ATTEMPTS => {
                    self.metrics.error();
                    tracing::warn!(table = %self.config.table, attempt, error = %e, "postgres write failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(pg_error(e)),
            }
        }
        Err(Error::service(CONNECTOR, "no attempt left"))
    }
}

fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn pg_error(e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        Some(db) => Error::service(CONNECTOR, format!("{}: {}", db.code().code(), db.message())),
        None => Error::service(CONNECTOR, e),
    }
}

#[async_trait::async_trait]
impl Sink for PostgresSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.write_batch(&batch).await?;
        self.metrics
            .records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        Ok(())
    }

    async fn pre_commit(&mut self, _checkpoint: u64) -> Result<Precommit> {
        // Every batch is written when it comes: nothing is pending at a barrier.
        Ok(Precommit::default())
    }
}
