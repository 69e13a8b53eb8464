//! The `file` sink: writes CSV (with a header row) or JSON-lines part files into a folder.
//!
//! A part file is built in memory and stored with one atomic `put` when it is complete (at
//! `rollover_rows` rows, `rollover_seconds` after its first row, or when the sink
//! finishes), so a reader never sees a partial file.
//! Part files are named `part-<n>-<unique>.csv` / `.jsonl`; the unique suffix keeps two runs
//! writing into the same folder from overwriting each other. With checkpoints they are
//! staged and committed as [`crate::commit`] describes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use datafusion::arrow::csv::WriterBuilder as CsvWriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::LineDelimitedWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::commit::{self, PartFiles};
use crate::error::{Error, Result};
use crate::metrics::ConnectorMetrics;
use crate::options::Options;
use crate::sink::{Committed, Precommit, Sink, SinkConfig, SinkContext};
use crate::store::{self, Location};

/// Rows per part file unless `rollover_rows` says otherwise.
pub const DEFAULT_ROLLOVER_ROWS: u64 = 1_000_000;

/// The text format of a `file` sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextFormat {
    Csv,
    Json,
}

impl TextFormat {
    fn extension(self) -> &'static str {
        match self {
            TextFormat::Csv => "csv",
            TextFormat::Json => "jsonl",
        }
    }
}

/// A validated `file` sink: the folder, the format, and when to start a new part file.
#[derive(Debug, Clone)]
pub struct FileSinkConfig {
    location: Location,
    format: TextFormat,
    rollover_rows: u64,
    rollover_seconds: Option<Duration>,
}

/// Resolves a sink's `path` option: a folder (local path or URL), never a glob.
///
/// # Errors
/// On a glob, or a location [`store::resolve`] rejects.
pub(crate) fn output_location(
    connector: &str,
    path: &str,
    aws_options: &[(String, String)],
) -> Result<Location> {
    let location = store::resolve(path, aws_options)?;
    if location.glob.is_some() {
        return Err(Error::option(
            connector,
            format!("option 'path' must name a folder, not a glob: '{path}'"),
        ));
    }
    Ok(location)
}

impl FileSinkConfig {
    /// Validates the options of a `file` sink. Nothing is written until rows arrive.
    ///
    /// # Errors
    /// An [`Error::Option`] naming a missing, unknown or ill-typed option.
    pub fn try_new(mut options: Options) -> Result<Self> {
        let path = options.require_string("path")?;
        let aws = options.take_prefixed("aws_");
        let format = match options.take_choice("format", &["csv", "json"])?.as_deref() {
            Some("csv") => TextFormat::Csv,
            Some(_) => TextFormat::Json,
            None => {
                return Err(Error::option(
                    "file",
                    "missing required option 'format' (csv or json)",
                ));
            }
        };
        let rollover_rows = options
            .take_u64("rollover_rows")?
            .unwrap_or(DEFAULT_ROLLOVER_ROWS);
        if rollover_rows == 0 {
            return Err(Error::option(
                "file",
                "option 'rollover_rows' must be at least 1",
            ));
        }
        let rollover_seconds = options.take_seconds("rollover_seconds")?;
        options.finish()?;
        let location = output_location("file", &path, &aws)?;
        Ok(Self {
            location,
            format,
            rollover_rows,
            rollover_seconds,
        })
    }
}

#[async_trait::async_trait]
impl SinkConfig for FileSinkConfig {
    async fn open(&self, _schema: SchemaRef, ctx: SinkContext) -> Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink {
            config: self.clone(),
            parts: PartFiles::new(Arc::clone(&self.location.store), ctx.two_phase(), &ctx.name),
            metrics: ctx.metrics,
            buf: Vec::new(),
            rows: 0,
            opened: None,
        }))
    }

    async fn commit(&self, _checkpoint: u64, pending: &serde_json::Value) -> Result<Committed> {
        commit::commit(&self.location.store, pending).await?;
        Ok(Committed::Visible)
    }

    async fn recover(&self, sink: &str, restored: Option<u64>) -> Result<()> {
        commit::recover(&self.location.store, &self.location.prefix, sink, restored).await
    }
}

/// A running `file` sink.
#[derive(Debug)]
struct FileSink {
    config: FileSinkConfig,
    metrics: Arc<ConnectorMetrics>,
    /// The part file being built.
    buf: Vec<u8>,
    /// Rows in `buf`.
    rows: u64,
    /// When the first row of `buf` came.
    opened: Option<Instant>,
    parts: PartFiles,
}

impl FileSink {
    /// Appends `batch` to the part file being built.
    fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        match self.config.format {
            TextFormat::Csv => {
                let mut writer = CsvWriterBuilder::new()
                    .with_header(self.rows == 0)
                    .build(&mut self.buf);
                writer.write(batch)?;
            }
            TextFormat::Json => {
                let mut writer = LineDelimitedWriter::new(&mut self.buf);
                writer.write(batch)?;
                writer.finish()?;
            }
        }
        Ok(())
    }

    /// Stores the part file being built, if it has rows.
    async fn flush_part(&mut self) -> Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        let len = data.len() as u64;
        let path = self
            .parts
            .put(
                &self.config.location.prefix,
                self.config.format.extension(),
                data,
            )
            .await?;
        tracing::debug!(file = %path, rows = self.rows, "file sink wrote a part file");
        self.metrics.bytes.fetch_add(len, Ordering::Relaxed);
        self.rows = 0;
        self.opened = None;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let total = batch.num_rows();
        let mut offset = 0;
        while offset < total {
            let room = usize::try_from(self.config.rollover_rows - self.rows).unwrap_or(usize::MAX);
            let take = room.min(total - offset);
            self.encode(&batch.slice(offset, take))?;
            self.opened.get_or_insert_with(Instant::now);
            self.rows += take as u64;
            offset += take;
            if self.rows >= self.config.rollover_rows {
                self.flush_part().await?;
            }
        }
        self.metrics
            .records
            .fetch_add(total as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.flush_part().await
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Precommit> {
        self.flush_part().await?;
        Ok(Precommit {
            pending: self.parts.pre_commit(checkpoint),
            ..Precommit::default()
        })
    }

    fn next_timer(&self) -> Option<Instant> {
        self.opened?.checked_add(self.config.rollover_seconds?)
    }

    async fn on_timer(&mut self) -> Result<()> {
        if self.next_timer().is_some_and(|due| due <= Instant::now()) {
            self.flush_part().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn opts(kv: &[(&str, &str)]) -> Options {
        Options::new(
            "file",
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn batch(ids: &[i64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let names: Vec<Option<String>> = ids.iter().map(|i| Some(format!("v,{i}"))).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_csv_parts_on_rollover_and_finish() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = FileSinkConfig::try_new(opts(&[
            ("path", out.to_str().unwrap()),
            ("format", "csv"),
            ("rollover_rows", "3"),
        ]))
        .unwrap();
        let metrics = Arc::new(ConnectorMetrics::default());
        let mut sink = config
            .open(
                batch(&[]).schema(),
                SinkContext {
                    metrics: Arc::clone(&metrics),
                    checkpoints: None,
                    name: "test".into(),
                    update_key: None,
                },
            )
            .await
            .unwrap();
        sink.write(batch(&[1, 2])).await.unwrap();
        sink.write(batch(&[3, 4])).await.unwrap();
        assert_eq!(files(&out).len(), 1, "only the full part is visible");
        sink.finish().await.unwrap();
        let names = files(&out);
        assert_eq!(names.len(), 2);
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("part-") && n.ends_with(".csv")),
            "{names:?}"
        );
        let first = std::fs::read_to_string(out.join(&names[0])).unwrap();
        assert_eq!(first, "id,s\n1,\"v,1\"\n2,\"v,2\"\n3,\"v,3\"\n");
        let second = std::fs::read_to_string(out.join(&names[1])).unwrap();
        assert_eq!(second, "id,s\n4,\"v,4\"\n");
        assert_eq!(metrics.records.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn rollover_seconds_finishes_a_part_with_no_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = FileSinkConfig::try_new(opts(&[
            ("path", out.to_str().unwrap()),
            ("format", "json"),
            ("rollover_seconds", "2"),
        ]))
        .unwrap();
        let mut sink = config
            .open(batch(&[]).schema(), SinkContext::default())
            .await
            .unwrap();
        assert_eq!(sink.next_timer(), None);
        sink.write(batch(&[1, 2])).await.unwrap();
        let due = sink.next_timer().unwrap();
        sink.on_timer().await.unwrap();
        assert!(!out.exists() || files(&out).is_empty(), "not due yet");
        tokio::time::sleep_until(due.into()).await;
        sink.on_timer().await.unwrap();
        let names = files(&out);
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(names[0].ends_with(".jsonl"), "{names:?}");
        assert_eq!(sink.next_timer(), None, "nothing open");
    }

    #[tokio::test]
    async fn writes_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let config = FileSinkConfig::try_new(opts(&[
            ("path", dir.path().to_str().unwrap()),
            ("format", "json"),
        ]))
        .unwrap();
        let mut sink = config
            .open(batch(&[]).schema(), SinkContext::default())
            .await
            .unwrap();
        sink.write(batch(&[7])).await.unwrap();
        sink.finish().await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1);
        assert!(names[0].ends_with(".jsonl"));
        let text = std::fs::read_to_string(dir.path().join(&names[0])).unwrap();
        assert_eq!(text, "{\"id\":7,\"s\":\"v,7\"}\n");
    }

    #[test]
    fn rejects_bad_options() {
        let err = FileSinkConfig::try_new(opts(&[("path", "/tmp/x")])).unwrap_err();
        assert!(err.to_string().contains("'format'"), "{err}");
        let err = FileSinkConfig::try_new(opts(&[
            ("path", "/tmp/x"),
            ("format", "csv"),
            ("compression", "zstd"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("'compression'"), "{err}");
        let err = FileSinkConfig::try_new(opts(&[("path", "/tmp/*.csv"), ("format", "csv")]))
            .unwrap_err();
        assert!(err.to_string().contains("glob"), "{err}");
    }
}
