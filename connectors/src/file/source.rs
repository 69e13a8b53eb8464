//! The running `file` source: reads its files one after another in path order, and with
//! `follow = true` keeps listing the location for files it has not read yet.
//!
//! CSV and JSON files are streamed from the store and cut at record boundaries into chunks
//! of at most `batch_size` records, which the format decoders turn into batches. Parquet
//! files are read with the parquet crate's async reader, projected to the needed columns.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::parquet::arrow::ProjectionMask;
use bytes::{Bytes, BytesMut};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    CONNECTOR, FileSourceConfig, SourceFormat, object_name, parquet_builder, parquet_error,
};
use crate::error::{Error, Result};
use crate::format::{CsvDecoder, JsonDecoder, LineSplitter, RecordDecoder};
use crate::schema_map::SchemaMap;
use crate::source::{Source, SourceContext};

/// How often a following source lists its location for new files.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// A running `file` source.
pub struct FileSource {
    config: FileSourceConfig,
    ctx: SourceContext,
    /// Files listed but not read yet, in path order.
    queue: VecDeque<ObjectMeta>,
    /// Every file ever queued, so that following never reads a file twice.
    seen: HashSet<Path>,
    /// The file being read.
    current: Option<OpenFile>,
    /// When the location was last listed.
    last_listing: Instant,
    /// Files read to their end, for checkpoints.
    done: BTreeSet<String>,
    /// The file being read, and how many of its rows were handed out (skipped ones too).
    current_name: Option<String>,
    current_rows: u64,
    /// Rows of the current file handed out before a restart, to skip.
    skip: u64,
    /// Followed Parquet files that could not be opened, as they were listed then: one
    /// still being written has no footer yet, so it is tried again once it changes.
    unreadable: HashMap<Path, (u64, chrono::DateTime<chrono::Utc>)>,
}

/// Where a file source stands: what [`Source::position`] saves.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FilePosition {
    done: BTreeSet<String>,
    current: Option<String>,
    rows: u64,
}

/// A file being read.
enum OpenFile {
    Text(TextFile),
    Parquet(ParquetFile),
}

/// A CSV or JSON file being streamed and decoded.
struct TextFile {
    name: String,
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    /// Bytes read but not decoded yet (cutting a chunk off its front copies nothing).
    buf: BytesMut,
    splitter: LineSplitter,
    /// The line number of the first line in `buf`.
    next_line: u64,
    eof: bool,
    decoder: Box<dyn RecordDecoder>,
}

/// A parquet file being read.
struct ParquetFile {
    name: String,
    stream: BoxStream<'static, ::parquet::errors::Result<RecordBatch>>,
    map: SchemaMap,
}

impl FileSource {
    /// Lists the location and starts reading.
    ///
    /// # Errors
    /// When the location cannot be listed (an empty location is fine when following).
    pub(super) async fn open(config: FileSourceConfig, ctx: SourceContext) -> Result<Self> {
        let files = match config.location.list().await {
            Ok(files) => files,
            Err(Error::Input(_)) if config.follow => Vec::new(),
            Err(e) => return Err(e),
        };
        let seen = files.iter().map(|m| m.location.clone()).collect();
        let resume: FilePosition = match &ctx.resume {
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| {
                Error::Internal(format!("a checkpointed file position is unreadable: {e}"))
            })?,
            None => FilePosition::default(),
        };
        let queue: VecDeque<ObjectMeta> = files
            .into_iter()
            .filter(|m| !resume.done.contains(m.location.as_ref()))
            .collect();
        let skip = match (&resume.current, queue.front()) {
            (Some(c), Some(first)) if first.location.as_ref() == c => resume.rows,
            _ => 0,
        };
        Ok(Self {
            config,
            ctx,
            queue,
            seen,
            current: None,
            last_listing: Instant::now(),
            done: resume.done,
            current_name: None,
            current_rows: 0,
            skip,
            unreadable: HashMap::new(),
        })
    }

    /// Opens a file for reading. (Takes the parts of the source it needs rather than `&self`,
    /// which is not `Sync`, so that the future stays `Send`.)
    async fn start(
        config: &FileSourceConfig,
        ctx: &SourceContext,
        meta: ObjectMeta,
    ) -> Result<OpenFile> {
        let name = object_name(&config.location, &meta.location);
        let store = &config.location.store;
        let schema = &config.schema;
        let decoder: Box<dyn RecordDecoder> = match &config.format {
            SourceFormat::Csv { header, delimiter } => {
                Box::new(CsvDecoder::try_new(schema, *header, *delimiter)?)
            }
            SourceFormat::Json => Box::new(JsonDecoder::try_new(schema)?),
            SourceFormat::Parquet => {
                // A file that is not parquet, or lacks a declared column, is one bad record.
                let bad = |message: String| Error::BadRecord {
                    location: name.clone(),
                    message,
                };
                let builder = parquet_builder(store, &meta, &name)
                    .await
                    .map_err(|e| match e {
                        Error::Input(message) => bad(message),
                        e => e,
                    })?;
                let file_schema = Arc::clone(builder.schema());
                let mut indices = schema
                    .fields()
                    .iter()
                    .map(|f| {
                        file_schema
                            .index_of(f.name())
                            .map_err(|_| bad(format!("the file has no column '{}'", f.name())))
                    })
                    .collect::<Result<Vec<usize>>>()?;
                indices.sort_unstable();
                indices.dedup();
                let projected = Arc::new(file_schema.project(&indices)?);
                let map = SchemaMap::try_new(CONNECTOR, &projected, Some(schema))
                    .map_err(|e| bad(format!("the file does not fit the source's columns: {e}")))?;
                let mask = ProjectionMask::roots(builder.parquet_schema(), indices.iter().copied());
                let stream = builder
                    .with_projection(mask)
                    .with_batch_size(ctx.batch_size.max(1))
                    .build()?
                    .boxed();
                ctx.metrics.bytes.fetch_add(meta.size, Ordering::Relaxed);
                return Ok(OpenFile::Parquet(ParquetFile { name, stream, map }));
            }
        };
        let stream = super::blocks::blocks(store.get(&meta.location).await?);
        let quote = matches!(config.format, SourceFormat::Csv { .. }).then_some(b'"');
        Ok(OpenFile::Text(TextFile {
            name,
            stream,
            buf: BytesMut::new(),
            splitter: LineSplitter::new(quote),
            next_line: 1,
            eof: false,
            decoder,
        }))
    }

    /// Reports a Parquet file (or its rest, from `location`) that cannot be read as one bad
    /// record; its location is what goes to the dead-letter file.
    fn report_bad_file(&self, location: &str, message: &str) -> Result<()> {
        self.ctx
            .bad_records
            .report(location, message, location.as_bytes())
    }

    /// Waits for the next listing, and queues the files it finds that were never seen.
    async fn poll_location(&mut self) -> Result<()> {
        tokio::time::sleep_until(self.last_listing + FOLLOW_INTERVAL).await;
        self.last_listing = Instant::now();
        let files = match self.config.location.list().await {
            Ok(files) => files,
            Err(Error::Input(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
        for meta in files {
            let changed = self
                .unreadable
                .get(&meta.location)
                .is_some_and(|&was| was != (meta.size, meta.last_modified));
            if changed {
                tracing::debug!(file = %meta.location, "file source tries a changed unreadable file again");
                self.unreadable.remove(&meta.location);
                self.queue.push_back(meta);
            } else if self.seen.insert(meta.location.clone()) {
                tracing::debug!(file = %meta.location, "file source found a new file");
                self.queue.push_back(meta);
            }
        }
        Ok(())
    }
}

impl TextFile {
    /// The next non-empty batch of this file, or `None` at its end.
    async fn next(&mut self, ctx: &SourceContext) -> Result<Option<RecordBatch>> {
        let max = ctx.batch_size.max(1);
        loop {
            let (boundary, records) = self.splitter.scan(&self.buf, max);
            let end = if records >= max {
                Some(boundary)
            } else if self.eof && !self.buf.is_empty() {
                Some(self.buf.len())
            } else {
                None
            };
            if let Some(end) = end {
                let newlines = self.splitter.newlines_before(end);
                let chunk = self.buf.split_to(end);
                self.splitter.cut();
                let first_line = self.next_line;
                self.next_line += newlines;
                let batch =
                    self.decoder
                        .decode(&chunk, &self.name, first_line, &ctx.bad_records)?;
                if batch.num_rows() > 0 {
                    return Ok(Some(batch));
                }
                continue;
            }
            if self.eof {
                return Ok(None);
            }
            match self.stream.next().await {
                Some(bytes) => {
                    let bytes = bytes?;
                    ctx.metrics
                        .bytes
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    self.buf.extend_from_slice(&bytes);
                }
                None => self.eof = true,
            }
        }
    }
}

impl ParquetFile {
    /// The next non-empty batch of this file in the source's schema, or `None` at its end.
    ///
    /// # Errors
    /// [`Error::Parquet`] when the file is damaged; a store error when the store fails.
    async fn next(&mut self) -> Result<Option<RecordBatch>> {
        while let Some(batch) = self.stream.next().await {
            let batch = batch.map_err(|e| parquet_error(e, Error::Parquet))?;
            if batch.num_rows() > 0 {
                return Ok(Some(self.map.apply(&batch)?));
            }
        }
        Ok(None)
    }
}

#[async_trait::async_trait]
impl Source for FileSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(file) = self.current.as_mut() {
                let next = match file {
                    OpenFile::Text(text) => text.next(&self.ctx).await?,
                    OpenFile::Parquet(parquet) => match parquet.next().await {
                        // A damaged parquet file: the rows before the damage are out; the
                        // rest of the file is one bad record.
                        Err(Error::Parquet(e)) => {
                            let location =
                                format!("{} after row {}", parquet.name, self.current_rows);
                            self.report_bad_file(
                                &location,
                                &format!("the rest of the file cannot be read: {e}"),
                            )?;
                            None
                        }
                        next => next?,
                    },
                };
                match next {
                    Some(batch) => {
                        let rows = batch.num_rows() as u64;
                        self.current_rows += rows;
                        // After a restart, rows handed out before it are read again and dropped.
                        let batch = if self.skip >= rows {
                            self.skip -= rows;
                            continue;
                        } else if self.skip > 0 {
                            let skip = usize::try_from(self.skip).unwrap_or(usize::MAX);
                            self.skip = 0;
                            batch.slice(skip, batch.num_rows() - skip)
                        } else {
                            batch
                        };
                        self.ctx
                            .metrics
                            .records
                            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                        return Ok(Some(batch));
                    }
                    None => {
                        self.current = None;
                        if let Some(name) = self.current_name.take() {
                            self.done.insert(name);
                        }
                        self.current_rows = 0;
                        // Rows to skip belong to the file resumed; a shorter one leaves some.
                        self.skip = 0;
                    }
                }
                continue;
            }
            if let Some(meta) = self.queue.pop_front() {
                let name = meta.location.to_string();
                let listed = (meta.location.clone(), meta.size, meta.last_modified);
                match Self::start(&self.config, &self.ctx, meta).await {
                    Ok(file) => {
                        self.current = Some(file);
                        self.current_name = Some(name);
                        self.current_rows = 0;
                    }
                    // A parquet file that cannot be read as one, or lacks a column: one bad
                    // record (its name goes to the dead-letter file), and the next file.
                    Err(Error::BadRecord { location, message }) => {
                        self.report_bad_file(&location, &message)?;
                        self.skip = 0;
                        if self.config.follow {
                            let (path, size, modified) = listed;
                            self.unreadable.insert(path, (size, modified));
                        } else {
                            self.done.insert(name);
                        }
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
            if !self.config.follow {
                return Ok(None);
            }
            self.poll_location().await?;
        }
    }

    fn position(&self) -> Option<serde_json::Value> {
        serde_json::to_value(FilePosition {
            done: self.done.clone(),
            current: self.current_name.clone(),
            rows: self.current_rows,
        })
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_records::{BadRecords, OnError};
    use crate::metrics::ConnectorMetrics;
    use crate::options::Options;
    use crate::source::SourceConfig;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

    fn ctx(batch_size: usize) -> SourceContext {
        let metrics = Arc::new(ConnectorMetrics::default());
        SourceContext {
            batch_size,
            linger: Duration::from_millis(100),
            metrics: Arc::clone(&metrics),
            bad_records: Arc::new(BadRecords::new(OnError::Skip, metrics)),
            resume: None,
            checkpointing: false,
            name: "test".into(),
            reader: "test".into(),
        }
    }

    fn opts(kv: &[(&str, &str)]) -> Options {
        Options::new(
            "file",
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// A temporary folder whose name does not start with '.', which listings skip.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("sluice-test")
            .tempdir()
            .unwrap()
    }

    fn decl() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    async fn read_all(config: &FileSourceConfig, ctx: SourceContext) -> Vec<RecordBatch> {
        let mut source = config.open(ctx).await.unwrap();
        let mut out = Vec::new();
        while let Some(batch) = source.next_batch().await.unwrap() {
            out.push(batch);
        }
        out
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[tokio::test]
    async fn reads_csv_files_of_a_glob_in_batches() {
        let dir = tempdir();
        std::fs::write(
            dir.path().join("a.csv"),
            "id,name\n1,a\n2,b\n3,c\nx,bad\n4,d",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.csv"),
            "id,name\n5,\"multi\nline\"\n6,f\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("c.json"), "{}\n").unwrap();
        let glob = format!("{}/*.csv", dir.path().to_str().unwrap());
        let config = FileSourceConfig::try_new(opts(&[("path", glob.as_str())]), Some(decl()))
            .await
            .unwrap();
        let ctx = ctx(2);
        let metrics = Arc::clone(&ctx.metrics);
        let batches = read_all(&config, ctx).await;
        assert!(batches.iter().all(|b| b.num_rows() <= 2));
        assert_eq!(ids(&batches), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(metrics.records.load(Ordering::Relaxed), 6);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
        assert!(metrics.bytes.load(Ordering::Relaxed) > 0);
    }

    #[tokio::test]
    async fn resumes_after_its_checkpointed_position() {
        let dir = tempdir();
        std::fs::write(dir.path().join("a.csv"), "id,name\n1,a\n2,b\n3,c\n").unwrap();
        std::fs::write(dir.path().join("b.csv"), "id,name\n4,d\n5,e\n6,f\n").unwrap();
        let glob = format!("{}/*.csv", dir.path().to_str().unwrap());
        let config = FileSourceConfig::try_new(opts(&[("path", glob.as_str())]), Some(decl()))
            .await
            .unwrap();
        // Stop after each number of batches; resuming from the position reads the rest.
        for taken in 0..6 {
            let mut source = config.open(ctx(2)).await.unwrap();
            let mut first = Vec::new();
            for _ in 0..taken {
                if let Some(b) = source.next_batch().await.unwrap() {
                    first.push(b);
                }
            }
            let mut resumed = ctx(2);
            resumed.resume = source.position();
            let rest = read_all(&config, resumed).await;
            let mut all = ids(&first);
            all.extend(ids(&rest));
            assert_eq!(all, vec![1, 2, 3, 4, 5, 6], "after {taken} batches");
        }
    }

    #[tokio::test]
    async fn reads_json_lines() {
        let dir = tempdir();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"id\":1,\"name\":\"a\"}\n{\"id\":2}\n").unwrap();
        let config =
            FileSourceConfig::try_new(opts(&[("path", path.to_str().unwrap())]), Some(decl()))
                .await
                .unwrap();
        assert_eq!(ids(&read_all(&config, ctx(8192)).await), vec![1, 2]);
    }

    #[tokio::test]
    async fn reads_parquet_with_a_projection() {
        let dir = tempdir();
        let path = dir.path().join("in.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("id", DataType::Int32, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(datafusion::arrow::array::StringArray::from(vec![
                    "a", "b", "c",
                ])),
                Arc::new(datafusion::arrow::array::Int32Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let mut writer = ::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            schema,
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let p = path.to_str().unwrap();

        let declared = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let config = FileSourceConfig::try_new(opts(&[("path", p)]), Some(declared))
            .await
            .unwrap();
        assert_eq!(config.schema().fields().len(), 1);
        let batches = read_all(&config, ctx(2)).await;
        assert_eq!(ids(&batches), vec![1, 2, 3]);
        assert!(
            batches
                .iter()
                .all(|b| b.num_rows() <= 2 && b.num_columns() == 1)
        );

        let config = FileSourceConfig::try_new(opts(&[("path", p)]), None)
            .await
            .unwrap();
        assert_eq!(config.schema().fields().len(), 2);
        let unknown = Arc::new(Schema::new(vec![Field::new("nope", DataType::Int64, true)]));
        let err = FileSourceConfig::try_new(opts(&[("path", p)]), Some(unknown))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("'nope'"), "{err}");
    }

    /// Writes ids as a parquet file of columns `id` (Int64) and `name`.
    fn write_parquet(path: &std::path::Path, ids: &[i64]) {
        let batch = RecordBatch::try_new(
            decl(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(datafusion::arrow::array::StringArray::from(
                    ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap();
        let mut writer = ::parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            decl(),
            None,
        )
        .unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
    }

    #[tokio::test]
    async fn a_damaged_parquet_file_is_a_bad_record_and_the_others_are_read() {
        let dir = tempdir();
        write_parquet(&dir.path().join("a.parquet"), &[1, 2]);
        std::fs::write(dir.path().join("b.parquet"), b"not parquet at all").unwrap();
        // A parquet file cut short: its footer is gone.
        write_parquet(&dir.path().join("c.parquet"), &[3, 4]);
        let c = std::fs::read(dir.path().join("c.parquet")).unwrap();
        std::fs::write(dir.path().join("c.parquet"), &c[..c.len() / 2]).unwrap();
        write_parquet(&dir.path().join("d.parquet"), &[5, 6]);
        let glob = format!("{}/*.parquet", dir.path().to_str().unwrap());
        let config = FileSourceConfig::try_new(opts(&[("path", glob.as_str())]), Some(decl()))
            .await
            .unwrap();
        let ctx = ctx(8192);
        let metrics = Arc::clone(&ctx.metrics);
        assert_eq!(ids(&read_all(&config, ctx).await), vec![1, 2, 5, 6]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 2);

        // With on_error = 'fail' the first damaged file stops the read, naming it.
        let mut failing = super::tests::ctx(8192);
        failing.bad_records =
            Arc::new(BadRecords::new(OnError::Fail, Arc::clone(&failing.metrics)));
        let mut source = config.open(failing).await.unwrap();
        let err = loop {
            match source.next_batch().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the damaged files were not reported"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("b.parquet"), "{err}");
    }

    #[tokio::test]
    async fn follow_picks_up_new_files() {
        let dir = tempdir();
        std::fs::write(dir.path().join("a.jsonl"), "{\"id\":1}\n").unwrap();
        let path = dir.path().to_str().unwrap();
        let config = FileSourceConfig::try_new(
            opts(&[("path", path), ("format", "json"), ("follow", "true")]),
            Some(decl()),
        )
        .await
        .unwrap();
        assert!(!config.is_bounded());
        let mut source = config.open(ctx(8192)).await.unwrap();
        let first = source.next_batch().await.unwrap().unwrap();
        assert_eq!(first.num_rows(), 1);
        std::fs::write(dir.path().join("b.jsonl"), "{\"id\":2}\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), source.next_batch())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ids(&[next]), vec![2]);
    }

    #[tokio::test]
    async fn a_followed_parquet_file_being_written_is_read_once_complete() {
        let dir = tempdir();
        write_parquet(&dir.path().join("a.parquet"), &[1]);
        // b.parquet is still being written: no footer yet.
        write_parquet(&dir.path().join("b.parquet"), &[2, 3]);
        let whole = std::fs::read(dir.path().join("b.parquet")).unwrap();
        std::fs::write(dir.path().join("b.parquet"), &whole[..whole.len() / 3]).unwrap();
        let path = dir.path().to_str().unwrap();
        let config = FileSourceConfig::try_new(
            opts(&[("path", path), ("format", "parquet"), ("follow", "true")]),
            Some(decl()),
        )
        .await
        .unwrap();
        let ctx = ctx(8192);
        let metrics = Arc::clone(&ctx.metrics);
        let mut source = config.open(ctx).await.unwrap();
        assert_eq!(ids(&[source.next_batch().await.unwrap().unwrap()]), vec![1]);
        // The partial file is one bad record, and nothing more comes while it stays so.
        let waited = tokio::time::timeout(Duration::from_millis(2500), source.next_batch()).await;
        assert!(waited.is_err(), "a partial file gave rows");
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
        // The writer finishes it: the next listing finds it changed and reads it whole.
        std::fs::write(dir.path().join("b.parquet"), &whole).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(10), source.next_batch())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ids(&[next]), vec![2, 3]);
        assert_eq!(metrics.bad_records.load(Ordering::Relaxed), 1);
    }
}
