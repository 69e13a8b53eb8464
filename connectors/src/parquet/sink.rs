//! The running `parquet` sink: one open file per partition folder, each encoded into memory
//! by an [`ArrowWriter`] and stored with one atomic `put` once it is complete, so that only
//! finished files ever carry a `.parquet` name.
//!
//! Rows are split by partition with Arrow kernels (a lexicographic sort on the partition
//! columns, then `partition` into runs of equal keys); the partition columns become the
//! `col=value` folder names and are left out of the files, as Hive does.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ::parquet::arrow::ArrowWriter;
use ::parquet::file::properties::WriterProperties;
use datafusion::arrow::array::{Array, ArrayRef, UInt32Array};
use datafusion::arrow::compute::{SortColumn, lexsort_to_indices, partition, take_record_batch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use object_store::path::{Path, PathPart};

use super::{CONNECTOR, ParquetSinkConfig};
use crate::commit::PartFiles;
use crate::error::{Error, Result};
use crate::metrics::ConnectorMetrics;
use crate::sink::{Precommit, Sink, SinkContext};

/// The folder name Hive gives a NULL (or empty) partition value.
const HIVE_DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Files open at once, at most: each holds its rows in memory until it is finished, so a
/// `partition_by` with many values finishes the file written least recently before
/// opening another.
const MAX_OPEN_FILES: usize = 256;

/// Bytes the open files may hold together before the largest is finished early.
const MAX_BUFFERED_BYTES: u64 = 512 << 20;

/// A running `parquet` sink.
pub(super) struct ParquetSink {
    root: Path,
    rollover_rows: u64,
    rollover_bytes: u64,
    rollover_seconds: Option<Duration>,
    props: WriterProperties,
    /// Indices of the partition columns in the input.
    partition_cols: Vec<usize>,
    /// Names of the partition columns, escaped for folder names.
    partition_names: Vec<String>,
    /// Indices of the columns written to the files.
    data_cols: Vec<usize>,
    /// The schema of the files: the input without the partition columns.
    file_schema: SchemaRef,
    /// Open files by partition folder (relative to `root`; empty without partitions).
    open: BTreeMap<String, OpenFile>,
    /// Files finished before their rollover to bound open files and memory.
    closed_early: u64,
    parts: PartFiles,
    metrics: Arc<ConnectorMetrics>,
}

/// A file being written.
struct OpenFile {
    folder: Path,
    writer: ArrowWriter<Vec<u8>>,
    rows: u64,
    opened: Instant,
    /// When rows last went in: the file written least recently is finished first when too
    /// many are open.
    written: Instant,
}

impl OpenFile {
    /// What the file holds in memory: the bytes encoded so far (the file is built in a
    /// `Vec`) and the row group being built, before encoding.
    fn memory(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.memory_size()) as u64
    }
}

/// Escapes a partition column name or value for a folder name as Hive's
/// `FileUtils.escapePathName` does: `%XX` for control characters and for
/// `" # % ' * / : = ? \\ { [ ] ^` and DEL, so that Spark, Hive and DuckDB read the value
/// back unchanged.
fn escape_path_value(value: &str) -> String {
    if value == "." || value == ".." {
        return value.replace('.', "%2E");
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let hive_escapes = matches!(
            c,
            '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
        );
        if hive_escapes || c.is_ascii_control() {
            let _ = write!(out, "%{:02X}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The type a column is written as: timestamps in the sink's `timestamp_unit`, the rest
/// as they are.
fn file_type(data_type: &DataType, unit: TimeUnit) -> DataType {
    match data_type {
        DataType::Timestamp(_, tz) => DataType::Timestamp(unit, tz.clone()),
        other => other.clone(),
    }
}

impl ParquetSink {
    /// A sink for batches of `schema`.
    ///
    /// # Errors
    /// When a `partition_by` column is not in `schema` (the message names it), or every
    /// column is a partition column.
    pub(super) fn try_new(
        config: &ParquetSinkConfig,
        schema: &SchemaRef,
        ctx: SinkContext,
    ) -> Result<Self> {
        let mut partition_cols = Vec::with_capacity(config.partition_by.len());
        for name in &config.partition_by {
            let idx = schema
                .fields()
                .iter()
                .position(|f| f.name() == name)
                .or_else(|| {
                    schema
                        .fields()
                        .iter()
                        .position(|f| f.name().eq_ignore_ascii_case(name))
                })
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        schema.fields().iter().map(|f| f.name().as_str()).collect();
                    Error::option(
                        CONNECTOR,
                        format!(
                            "partition_by column '{name}' is not in the sink's input; it has: {}",
                            known.join(", ")
                        ),
                    )
                })?;
            partition_cols.push(idx);
        }
        let data_cols: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !partition_cols.contains(i))
            .collect();
        if data_cols.is_empty() {
            return Err(Error::option(
                CONNECTOR,
                "partition_by cannot name every column: the files would have none",
            ));
        }
        let partition_names = partition_cols
            .iter()
            .map(|i| escape_path_value(schema.field(*i).name()))
            .collect();
        let file_schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            data_cols
                .iter()
                .map(|i| {
                    let f = schema.field(*i);
                    Field::new(
                        f.name(),
                        file_type(f.data_type(), config.timestamp_unit),
                        f.is_nullable(),
                    )
                    .with_metadata(f.metadata().clone())
                })
                .collect::<Vec<_>>(),
            schema.metadata().clone(),
        ));
        let props = WriterProperties::builder()
            .set_compression(config.compression)
            .build();
        Ok(Self {
            root: config.location.prefix.clone(),
            rollover_rows: config.rollover_rows,
            rollover_bytes: config.rollover_bytes,
            rollover_seconds: config.rollover_seconds,
            props,
            partition_cols,
            partition_names,
            data_cols,
            file_schema,
            open: BTreeMap::new(),
            closed_early: 0,
            parts: PartFiles::new(
                Arc::clone(&config.location.store),
                ctx.two_phase(),
                &ctx.name,
            ),
            metrics: ctx.metrics,
        })
    }

    /// The partition folder (relative to the root) of the first row of `batch`.
    fn partition_key(&self, batch: &RecordBatch) -> Result<String> {
        let options = FormatOptions::default();
        let mut segments = Vec::with_capacity(self.partition_cols.len());
        for (idx, name) in self.partition_cols.iter().zip(&self.partition_names) {
            let column = batch.column(*idx);
            let value = if column.is_null(0) {
                String::new()
            } else {
                ArrayFormatter::try_new(column.as_ref(), &options)?
                    .value(0)
                    .to_string()
            };
            let value = if value.is_empty() {
                HIVE_DEFAULT_PARTITION.to_string()
            } else {
                escape_path_value(&value)
            };
            segments.push(format!("{name}={value}"));
        }
        Ok(segments.join("/"))
    }

    /// Splits `batch` into the rows of each partition folder, without the partition columns.
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        if self.partition_cols.is_empty() {
            return Ok(vec![(String::new(), self.file_rows(batch)?)]);
        }
        let keys: Vec<ArrayRef> = self
            .partition_cols
            .iter()
            .map(|i| Arc::clone(batch.column(*i)))
            .collect();
        let sorted = if partition(&keys)?.len() <= 1 {
            batch.clone()
        } else {
            // Sort by the partition columns, then by row number to keep the input order.
            let rows = u32::try_from(batch.num_rows())
                .map_err(|_| Error::Internal("a batch of more than u32::MAX rows".to_string()))?;
            let mut sort_columns: Vec<SortColumn> = keys
                .iter()
                .map(|k| SortColumn {
                    values: Arc::clone(k),
                    options: None,
                })
                .collect();
            sort_columns.push(SortColumn {
                values: Arc::new(UInt32Array::from_iter_values(0..rows)),
                options: None,
            });
            let indices = lexsort_to_indices(&sort_columns, None)?;
            take_record_batch(batch, &indices)?
        };
        let sorted_keys: Vec<ArrayRef> = self
            .partition_cols
            .iter()
            .map(|i| Arc::clone(sorted.column(*i)))
            .collect();
        let mut out = Vec::new();
        for range in partition(&sorted_keys)?.ranges() {
            let rows = sorted.slice(range.start, range.end - range.start);
            let key = self.partition_key(&rows)?;
            out.push((key, self.file_rows(&rows)?));
        }
        Ok(out)
    }

    /// The rows of `batch` as the files hold them: without the partition columns, with
    /// timestamps in the sink's `timestamp_unit` (finer digits cut off by Arrow's cast).
    fn file_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns = self
            .data_cols
            .iter()
            .zip(self.file_schema.fields())
            .map(|(i, field)| {
                let column = batch.column(*i);
                if column.data_type() == field.data_type() {
                    Ok(Arc::clone(column))
                } else {
                    Ok(cast(column, field.data_type())?)
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(Arc::clone(&self.file_schema), columns)?)
    }

    /// The folder of partition `key`.
    fn folder(&self, key: &str) -> Result<Path> {
        let mut folder = self.root.clone();
        for segment in key.split('/').filter(|s| !s.is_empty()) {
            let part = PathPart::parse(segment).map_err(|e| {
                Error::Internal(format!(
                    "partition folder '{segment}' is not a valid path part: {e}"
                ))
            })?;
            folder = folder.join(part);
        }
        Ok(folder)
    }

    /// Appends rows to the open file of partition `key`, rolling it over as it fills.
    async fn write_partition(&mut self, key: String, data: RecordBatch) -> Result<()> {
        let total = data.num_rows();
        let mut offset = 0;
        while offset < total {
            let folder = if self.open.contains_key(&key) {
                None
            } else {
                if self.open.len() >= MAX_OPEN_FILES
                    && let Some(idle) = self
                        .open
                        .iter()
                        .min_by_key(|(_, f)| f.written)
                        .map(|(k, _)| k.clone())
                {
                    self.close_early(&idle, "too many partitions open").await?;
                }
                Some(self.folder(&key)?)
            };
            let file = match self.open.entry(key.clone()) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(OpenFile {
                    folder: folder.unwrap_or_else(|| self.root.clone()),
                    writer: ArrowWriter::try_new(
                        Vec::new(),
                        Arc::clone(&self.file_schema),
                        Some(self.props.clone()),
                    )?,
                    rows: 0,
                    opened: Instant::now(),
                    written: Instant::now(),
                }),
            };
            let room = usize::try_from(self.rollover_rows.saturating_sub(file.rows))
                .unwrap_or(usize::MAX)
                .max(1);
            let take = room.min(total - offset);
            file.writer.write(&data.slice(offset, take))?;
            file.written = Instant::now();
            file.rows += take as u64;
            offset += take;
            let size = (file.writer.bytes_written() + file.writer.in_progress_size()) as u64;
            if file.rows >= self.rollover_rows || size >= self.rollover_bytes {
                self.close(&key).await?;
            }
        }
        Ok(())
    }

    /// Finishes the largest open files while together they hold more than
    /// [`MAX_BUFFERED_BYTES`] in memory.
    async fn bound_memory(&mut self) -> Result<()> {
        loop {
            let total: u64 = self.open.values().map(OpenFile::memory).sum();
            if total <= MAX_BUFFERED_BYTES {
                return Ok(());
            }
            let Some(largest) = self
                .open
                .iter()
                .max_by_key(|(_, f)| f.memory())
                .map(|(k, _)| k.clone())
            else {
                return Ok(());
            };
            self.close_early(&largest, "open files hold too much memory")
                .await?;
        }
    }

    /// Finishes a file before its rollover, saying so now and then: it makes more, smaller
    /// files than the options ask for.
    async fn close_early(&mut self, key: &str, why: &str) -> Result<()> {
        self.closed_early += 1;
        if self.closed_early == 1 || self.closed_early.is_multiple_of(1000) {
            tracing::warn!(
                partition = key,
                why,
                closed_early = self.closed_early,
                "parquet sink finished a file before its rollover"
            );
        }
        self.close(key).await
    }

    /// Closes every file open longer than `rollover_seconds`.
    async fn close_expired(&mut self) -> Result<()> {
        let Some(max_age) = self.rollover_seconds else {
            return Ok(());
        };
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, f)| f.opened.elapsed() >= max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.close(&key).await?;
        }
        Ok(())
    }

    /// Finishes the file of partition `key` and stores it under its final name.
    async fn close(&mut self, key: &str) -> Result<()> {
        let Some(file) = self.open.remove(key) else {
            return Ok(());
        };
        let rows = file.rows;
        let data = file.writer.into_inner()?;
        let len = data.len() as u64;
        let path = self.parts.put(&file.folder, "parquet", data).await?;
        self.metrics.bytes.fetch_add(len, Ordering::Relaxed);
        tracing::debug!(file = %path, rows, bytes = len, "parquet sink wrote a file");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.close_expired().await?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.metrics
            .records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        for (key, data) in self.split(&batch)? {
            self.write_partition(key, data).await?;
        }
        // Once per batch, not per partition: it looks at every open file.
        self.bound_memory().await
    }

    async fn finish(&mut self) -> Result<()> {
        let keys: Vec<String> = self.open.keys().cloned().collect();
        for key in keys {
            self.close(&key).await?;
        }
        Ok(())
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Precommit> {
        // Every row before the barrier belongs to this checkpoint: close the open files.
        self.finish().await?;
        Ok(Precommit {
            pending: self.parts.pre_commit(checkpoint),
            ..Precommit::default()
        })
    }

    fn next_timer(&self) -> Option<std::time::Instant> {
        let max_age = self.rollover_seconds?;
        // `checked_`: an age past what `Instant` holds never comes.
        self.open
            .values()
            .filter_map(|f| f.opened.checked_add(max_age))
            .min()
    }

    async fn on_timer(&mut self) -> Result<()> {
        self.close_expired().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;
    use crate::sink::SinkConfig;
    use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("k", DataType::Utf8, true),
        ]))
    }

    fn batch(ids: &[i64], keys: &[Option<&str>]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(keys.to_vec())),
            ],
        )
        .unwrap()
    }

    fn config(dir: &std::path::Path, extra: &[(&str, &str)]) -> ParquetSinkConfig {
        let mut kv = vec![("path".to_string(), dir.to_str().unwrap().to_string())];
        kv.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ParquetSinkConfig::try_new(Options::new("parquet", kv)).unwrap()
    }

    /// Every file under `dir`, as paths relative to it, sorted.
    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    out.push(path.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    }

    fn read(path: &std::path::Path) -> Vec<RecordBatch> {
        let file = std::fs::File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    #[tokio::test]
    async fn rolls_over_by_rows() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(ConnectorMetrics::default());
        let mut sink = config(dir.path(), &[("rollover_rows", "2")])
            .open(
                schema(),
                SinkContext {
                    metrics: Arc::clone(&metrics),
                    checkpoints: None,
                    name: "test".into(),
                    update_key: None,
                },
            )
            .await
            .unwrap();
        sink.write(batch(&[1, 2, 3], &[Some("a"), None, Some("b")]))
            .await
            .unwrap();
        sink.write(batch(&[4, 5, 6], &[Some("a"), Some("a"), Some("a")]))
            .await
            .unwrap();
        sink.finish().await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.to_string_lossy().ends_with(".parquet")),
            "{names:?}"
        );
        let rows: usize = names
            .iter()
            .flat_map(|n| read(&dir.path().join(n)))
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 6);
        assert_eq!(metrics.records.load(Ordering::Relaxed), 6);
        assert!(metrics.bytes.load(Ordering::Relaxed) > 0);
    }

    /// Regression: `rollover_seconds` was only looked at when a batch came, so on a quiet
    /// stream without checkpoints a file stayed invisible until the next row.
    #[tokio::test]
    async fn a_file_open_past_rollover_seconds_is_due_without_a_new_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = config(dir.path(), &[("rollover_seconds", "0.2")])
            .open(schema(), SinkContext::default())
            .await
            .unwrap();
        assert_eq!(sink.next_timer(), None, "nothing open, nothing due");
        sink.write(batch(&[1, 2], &[Some("a"), None]))
            .await
            .unwrap();
        let due = sink.next_timer().expect("an open file is due to roll over");
        assert!(due <= Instant::now() + Duration::from_millis(200));
        assert!(files(dir.path()).is_empty());
        tokio::time::sleep_until(due.into()).await;
        sink.on_timer().await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(read(&dir.path().join(&names[0]))[0].num_rows(), 2);
        assert_eq!(sink.next_timer(), None);

        // An age past what `Instant` can hold is never due, and no panic.
        let mut forever = config(dir.path(), &[("rollover_seconds", "1e19")])
            .open(schema(), SinkContext::default())
            .await
            .unwrap();
        forever.write(batch(&[3], &[Some("b")])).await.unwrap();
        assert_eq!(forever.next_timer(), None);
    }

    /// Regression: every partition value kept a file open in memory until the end, so a
    /// `partition_by` with many values could run the process out of memory.
    #[tokio::test]
    async fn many_partition_values_keep_a_bounded_number_of_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = config(dir.path(), &[("partition_by", "k")])
            .open(schema(), SinkContext::default())
            .await
            .unwrap();
        let ids: Vec<i64> = (0..300).collect();
        let keys: Vec<String> = ids.iter().map(|i| format!("k{i}")).collect();
        sink.write(batch(
            &ids,
            &keys.iter().map(|k| Some(k.as_str())).collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
        let finished = files(dir.path()).len();
        assert_eq!(finished, 300 - MAX_OPEN_FILES, "files finished early");
        sink.finish().await.unwrap();
        let names = files(dir.path());
        assert_eq!(names.len(), 300);
        let rows: usize = names
            .iter()
            .flat_map(|n| read(&dir.path().join(n)))
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, 300);
    }

    #[tokio::test]
    async fn partitions_into_hive_folders() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = config(
            dir.path(),
            &[("partition_by", "k"), ("compression", "zstd")],
        )
        .open(schema(), SinkContext::default())
        .await
        .unwrap();
        sink.write(batch(
            &[1, 2, 3, 4, 5],
            &[Some("b"), Some("a"), None, Some("a/x"), Some("b")],
        ))
        .await
        .unwrap();
        sink.write(batch(&[6], &[Some("a")])).await.unwrap();
        sink.finish().await.unwrap();
        let names = files(dir.path());
        let folders: Vec<String> = names
            .iter()
            .map(|n| n.parent().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            folders,
            vec!["k=__HIVE_DEFAULT_PARTITION__", "k=a", "k=a%2Fx", "k=b"],
            "{names:?}"
        );
        let b = read(&dir.path().join(&names[3]));
        assert_eq!(
            b[0].num_columns(),
            1,
            "the partition column is not in the file"
        );
        let ids = b[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1, 5]);
        let a = read(&dir.path().join(&names[1]));
        let ids: Vec<i64> = a
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(ids, vec![2, 6]);
    }

    #[tokio::test]
    async fn unknown_partition_column_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = config(dir.path(), &[("partition_by", "nope")])
            .open(schema(), SinkContext::default())
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("'nope'"), "{err}");
    }

    #[test]
    fn escapes_folder_names() {
        assert_eq!(escape_path_value("a/b=c%d"), "a%2Fb%3Dc%25d");
        assert_eq!(escape_path_value(".."), "%2E%2E");
        // As Hive's FileUtils.escapePathName: ':' and the rest of its list, not spaces.
        assert_eq!(
            escape_path_value("2024-01-01T00:00:00"),
            "2024-01-01T00%3A00%3A00"
        );
        assert_eq!(
            escape_path_value("a b#c?d*e'f\"g[h]i{j^k\\l\u{7f}m\u{1}"),
            "a b%23c%3Fd%2Ae%27f%22g%5Bh%5Di%7Bj%5Ek%5Cl%7Fm%01"
        );
        assert_eq!(escape_path_value("é-ü"), "é-ü");
    }

    #[tokio::test]
    async fn timestamps_are_written_as_micros_unless_the_sink_says_otherwise() {
        use ::parquet::file::reader::{FileReader, SerializedFileReader};
        use datafusion::arrow::array::TimestampNanosecondArray;
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )]));
        let rows = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(TimestampNanosecondArray::from(vec![
                1_704_067_201_123_456_789,
            ]))],
        )
        .unwrap();
        for (unit, physical) in [
            (None, "TIMESTAMP(MICROS,false)"),
            (Some("millis"), "TIMESTAMP(MILLIS,false)"),
            (Some("nanos"), "TIMESTAMP(NANOS,false)"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let options: Vec<(&str, &str)> =
                unit.map(|u| vec![("timestamp_unit", u)]).unwrap_or_default();
            let mut sink = config(dir.path(), &options)
                .open(Arc::clone(&schema), SinkContext::default())
                .await
                .unwrap();
            sink.write(rows.clone()).await.unwrap();
            sink.finish().await.unwrap();
            let names = files(dir.path());
            let file = std::fs::File::open(dir.path().join(&names[0])).unwrap();
            let reader = SerializedFileReader::new(file).unwrap();
            let column = reader.metadata().file_metadata().schema_descr().column(0);
            let logical = format!("{:?}", column.logical_type_ref());
            let expected_unit = physical.split('(').nth(1).unwrap().split(',').next().unwrap();
            assert!(
                logical.to_ascii_uppercase().contains(expected_unit),
                "{unit:?}: {logical}"
            );
            let back = read(&dir.path().join(&names[0]));
            assert_eq!(back[0].num_rows(), 1);
        }
        let err = ParquetSinkConfig::try_new(Options::new(
            "parquet",
            [
                ("path".to_string(), "/tmp/x".to_string()),
                ("timestamp_unit".to_string(), "seconds".to_string()),
            ],
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("timestamp_unit"), "{err}");
    }
}
