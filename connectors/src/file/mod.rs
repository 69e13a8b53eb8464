//! The `file` connector: a source reading CSV, JSON-lines or Parquet files from a path,
//! folder, glob or object-store URL (optionally following it for new files), and a sink
//! writing CSV or JSON-lines part files into a folder.
//!
//! This module validates a `CREATE SOURCE ... WITH (connector = 'file', ...)`; the running
//! source is in [`source`], the sink in [`sink`].

mod blocks;
pub mod sink;
pub mod source;

use std::ops::Range;
use std::sync::Arc;

use ::parquet::arrow::ParquetRecordBatchStreamBuilder;
use ::parquet::arrow::arrow_reader::ArrowReaderOptions;
use ::parquet::arrow::async_reader::AsyncFileReader;
use ::parquet::errors::{ParquetError, Result as ParquetResult};
use ::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};
use crate::format::{CsvDecoder, JsonDecoder, RecordDecoder, nullable_schema};
use crate::options::Options;
use crate::schema_map::SchemaMap;
use crate::source::{Source, SourceConfig, SourceContext};
use crate::store::{self, Location};

pub use sink::FileSinkConfig;

/// The connector's name in messages.
const CONNECTOR: &str = "file";

/// How the files of a source are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SourceFormat {
    /// CSV, with or without a header row.
    Csv {
        /// Whether the first line of each file is a header.
        header: bool,
        /// The field delimiter.
        delimiter: u8,
    },
    /// One JSON object per line.
    Json,
    /// Parquet files.
    Parquet,
}

/// A validated `file` source: where the files are, how they are encoded, what they hold.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    location: Location,
    format: SourceFormat,
    schema: SchemaRef,
    follow: bool,
}

/// The format a path's extension implies, if any.
fn infer_format(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        Some("csv")
    } else if lower.ends_with(".json") || lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        Some("json")
    } else if lower.ends_with(".parquet") {
        Some("parquet")
    } else {
        None
    }
}

impl FileSourceConfig {
    /// Validates the options of a `file` source and looks at its input: the location must
    /// exist, csv and json need declared columns, and for parquet the declared columns are
    /// checked against the first file's schema.
    ///
    /// # Errors
    /// An [`Error::Option`] naming the option or column at fault, or an [`Error::Input`] when
    /// the location does not exist or a parquet file cannot be read.
    pub async fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let path = options.require_string("path")?;
        let aws = options.take_prefixed("aws_");
        let format = match options.take_choice("format", &["csv", "json", "parquet"])? {
            Some(f) => f,
            None => infer_format(&path).map(str::to_string).ok_or_else(|| {
                Error::option(CONNECTOR, format!("missing option 'format' (csv, json or parquet): it cannot be inferred from '{path}'"))
            })?,
        };
        let header = options.take_bool("header")?;
        let delimiter = options.take_char("delimiter")?;
        let follow = options.take_bool("follow")?.unwrap_or(false);
        options.finish()?;
        let format = match format.as_str() {
            "csv" => SourceFormat::Csv {
                header: header.unwrap_or(true),
                delimiter: delimiter.unwrap_or(b','),
            },
            other => {
                for (key, given) in [
                    ("header", header.is_some()),
                    ("delimiter", delimiter.is_some()),
                ] {
                    if given {
                        return Err(Error::option(
                            CONNECTOR,
                            format!("option '{key}' applies to the csv format only, not {other}"),
                        ));
                    }
                }
                if other == "json" {
                    SourceFormat::Json
                } else {
                    SourceFormat::Parquet
                }
            }
        };

        let location = store::resolve(&path, &aws)?;
        let files = location.list().await?;
        if files.is_empty() && !follow {
            return Err(Error::Input(format!("no file matches '{path}'")));
        }

        let declared = declared.filter(|s| !s.fields().is_empty());
        let needs_columns = |name: &str| {
            Error::option(
                CONNECTOR,
                format!(
                    "the {name} format needs a column list: CREATE SOURCE name (column TYPE, ...) WITH (...)"
                ),
            )
        };
        let schema = match &format {
            SourceFormat::Csv { header, delimiter } => {
                let declared = declared.ok_or_else(|| needs_columns("csv"))?;
                CsvDecoder::try_new(&declared, *header, *delimiter)
                    .map_err(|e| Error::option(CONNECTOR, e.to_string()))?
                    .schema()
            }
            SourceFormat::Json => {
                let declared = declared.ok_or_else(|| needs_columns("json"))?;
                JsonDecoder::try_new(&declared)
                    .map_err(|e| Error::option(CONNECTOR, e.to_string()))?
                    .schema()
            }
            SourceFormat::Parquet => match files.first() {
                Some(meta) => {
                    let name = object_name(&location, &meta.location);
                    let builder = parquet_builder(&location.store, meta, &name).await?;
                    let file_schema = Arc::clone(builder.schema());
                    let declared = declared.unwrap_or_else(|| Arc::clone(&file_schema));
                    SchemaMap::try_new(CONNECTOR, &file_schema, Some(&declared))?.schema()
                }
                None => declared.map(|d| nullable_schema(&d)).ok_or_else(|| {
                    Error::option(
                        CONNECTOR,
                        format!(
                            "no parquet file matches '{path}' yet: declare the columns to follow it"
                        ),
                    )
                })?,
            },
        };
        Ok(Self {
            location,
            format,
            schema,
            follow,
        })
    }
}

#[async_trait::async_trait]
impl SourceConfig for FileSourceConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        !self.follow
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        Ok(Box::new(source::FileSource::open(self.clone(), ctx).await?))
    }
}

/// How an object is named in messages and bad-record locations: the local path, or the URL.
fn object_name(location: &Location, path: &Path) -> String {
    match location.display.split_once("://") {
        Some((scheme @ ("s3" | "s3a"), rest)) => {
            let bucket = rest.split('/').next().unwrap_or_default();
            format!("{scheme}://{bucket}/{path}")
        }
        Some((scheme, _)) if scheme != "file" => format!("{scheme}://{path}"),
        _ => format!("/{path}"),
    }
}

/// A parquet object read through its store, with its size known from the listing so that
/// the footer is fetched with one bounded range request.
#[derive(Debug, Clone)]
struct ObjectFile {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for ObjectFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<Bytes>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(ParquetError::from)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, ParquetResult<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(ParquetError::from)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .load_and_finish(self, size)
                .await?;
            Ok::<_, ParquetError>(Arc::new(metadata))
        }
        .boxed()
    }
}

/// Opens a parquet object for reading: its footer is read, its schema known.
async fn parquet_builder(
    store: &Arc<dyn ObjectStore>,
    meta: &ObjectMeta,
    name: &str,
) -> Result<ParquetRecordBatchStreamBuilder<ObjectFile>> {
    let file = ObjectFile {
        store: Arc::clone(store),
        path: meta.location.clone(),
        size: meta.size,
    };
    ParquetRecordBatchStreamBuilder::new(file)
        .await
        .map_err(|e| {
            parquet_error(e, |e| {
                Error::Input(format!("cannot read '{name}' as parquet: {e}"))
            })
        })
}

/// A parquet error: the store's own failure (worth a retry) as a store error, anything
/// else (the file's content) as `content` says.
fn parquet_error(e: ParquetError, content: impl FnOnce(ParquetError) -> Error) -> Error {
    match e {
        ParquetError::External(inner) => match inner.downcast::<object_store::Error>() {
            Ok(store) => Error::ObjectStore(*store),
            Err(other) => content(ParquetError::External(other)),
        },
        e => content(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    fn opts(kv: &[(&str, &str)]) -> Options {
        Options::new(
            "file",
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[tokio::test]
    async fn validates_at_create_time() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("a.csv");
        std::fs::write(&csv, "x\n1\n").unwrap();
        let csv = csv.to_str().unwrap();
        let decl = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));

        let err = FileSourceConfig::try_new(opts(&[("path", csv)]), None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("column list"), "{err}");
        let err = FileSourceConfig::try_new(
            opts(&[("path", csv), ("headr", "true")]),
            Some(Arc::clone(&decl)),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("'headr'"), "{err}");
        let missing = dir.path().join("nope.csv");
        let err = FileSourceConfig::try_new(
            opts(&[("path", missing.to_str().unwrap())]),
            Some(Arc::clone(&decl)),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("nope.csv"), "{err}");
        let err = FileSourceConfig::try_new(
            opts(&[("path", dir.path().to_str().unwrap())]),
            Some(Arc::clone(&decl)),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("'format'"), "{err}");

        let config = FileSourceConfig::try_new(opts(&[("path", csv)]), Some(decl))
            .await
            .unwrap();
        assert!(config.is_bounded());
        assert_eq!(
            config.format,
            SourceFormat::Csv {
                header: true,
                delimiter: b','
            }
        );
    }
}
