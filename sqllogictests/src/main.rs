//! sqllogictest runner for Sluice: every `.slt` file under `test_files/` runs against a
//! fresh engine session. Bounded pipelines run to completion before each query, so results
//! are deterministic. `--complete` rewrites the expected results from the actual ones.
//!
//! Usage: `cargo test -p sluice-sqllogictests --test sqllogictests [-- [--complete] [FILTER]]`

use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sluice_engine::{Session, StatementOutput};
use sqllogictest::{DBOutput, DefaultColumnType};

/// One fresh engine per file.
struct SluiceDb {
    session: Session,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for SluiceDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let outputs = self
            .session
            .execute_script(sql)
            .await
            .map_err(|e| DbError(e.to_string()))?;
        let mut last = DBOutput::StatementComplete(0);
        for output in outputs {
            last = match output {
                StatementOutput::Done(_) => DBOutput::StatementComplete(0),
                StatementOutput::Rows { batches, .. } => rows(&batches)?,
                StatementOutput::Query { stream, .. } => rows(
                    &sluice_engine::session::query::collect(stream)
                        .await
                        .map_err(|e| DbError(e.to_string()))?,
                )?,
                StatementOutput::Stream {
                    mut rows, pipeline, ..
                } => {
                    let mut batches = Vec::new();
                    while let Some(b) = rows.recv().await {
                        batches.push(b);
                    }
                    if let Some(p) = self.session.pipelines().iter().find(|p| p.name == pipeline) {
                        p.wait().await.map_err(|e| DbError(e.to_string()))?;
                    }
                    self::rows(&batches)?
                }
            };
        }
        // Let bounded pipelines (sinks, materialized views) finish before the next record.
        self.session
            .wait_bounded()
            .await
            .map_err(|e| DbError(e.to_string()))?;
        Ok(last)
    }

    async fn shutdown(&mut self) {
        let _ = self.session.shutdown().await;
    }

    fn engine_name(&self) -> &str {
        "sluice"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}

fn rows(batches: &[RecordBatch]) -> Result<DBOutput<DefaultColumnType>, DbError> {
    let Some(first) = batches.first() else {
        return Ok(DBOutput::Rows {
            types: vec![],
            rows: vec![],
        });
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => DefaultColumnType::Integer,
            DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
                DefaultColumnType::FloatingPoint
            }
            _ => DefaultColumnType::Text,
        })
        .collect();
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c: &ArrayRef| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DbError(e.to_string()))?;
        for r in 0..batch.num_rows() {
            out.push(
                formatters
                    .iter()
                    .zip(batch.columns())
                    .map(|(f, c)| {
                        let v = f.value(r).to_string();
                        if v.is_empty() && !c.is_null(r) {
                            "(empty)".to_string()
                        } else {
                            v
                        }
                    })
                    .collect(),
            );
        }
    }
    Ok(DBOutput::Rows { types, rows: out })
}

fn test_files(filter: Option<&str>) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_files");
    let pattern = format!("{}/**/*.slt", root.display());
    let mut files: Vec<PathBuf> = glob::glob(&pattern)
        .map(|g| g.filter_map(Result::ok).collect())
        .unwrap_or_default();
    files.retain(|f| filter.is_none_or(|flt| f.to_string_lossy().contains(flt)));
    files.sort();
    files
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Relative paths in the .slt files resolve against this crate's folder.
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR"))?;
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--") || a == "--complete")
        .collect();
    let complete = args.iter().any(|a| a == "--complete");
    let filter = args.iter().find(|a| *a != "--complete").map(String::as_str);
    let files = test_files(filter);
    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let name = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(file)
            .display()
            .to_string();
        let mut runner = sqllogictest::Runner::new(|| async {
            Ok(SluiceDb {
                session: new_session(),
            })
        });
        let result = if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner
                .run_file_async(file)
                .await
                .map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok      {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED  {name}\n{e}\n");
            }
        }
    }
    println!("sqllogictests: {passed} passed, {failed} failed");
    if failed > 0 || files.is_empty() {
        anyhow::bail!("{failed} of {} sqllogictest files failed", files.len());
    }
    Ok(())
}

fn new_session() -> Session {
    let mut s = Session::new();
    s.settle_before_queries(true);
    s
}
