//! Keeps a session's catalog under the storage root: the CREATE statements of every live
//! source, view, materialized view and sink, in creation order, as one SQL script that a
//! restarted server replays. Written whole and atomically (object_store `put`) after each
//! change. Beside it, `views/<name>.arrow` keeps the rows of materialized views whose
//! bounded input was fully consumed, saved at a clean stop.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// The catalog file under a storage root, and the saved rows of materialized views.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    store: Arc<dyn ObjectStore>,
    path: Path,
    views: Path,
}

impl CatalogStore {
    /// The catalog of the storage root `root` (a local folder or an object_store URL).
    ///
    /// # Errors
    /// When the root cannot be resolved.
    pub fn open(root: &str) -> Result<Self> {
        let location = sluice_connectors::store::resolve(root, &[])?;
        let path = location.prefix.clone().join("catalog.sql");
        let views = location.prefix.clone().join("views");
        Ok(Self {
            store: location.store,
            path,
            views,
        })
    }

    /// The stored script, if any.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn load(&self) -> Result<Option<String>> {
        match self.store.get(&self.path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(sluice_connectors::Error::from)?;
                String::from_utf8(bytes.to_vec())
                    .map(Some)
                    .map_err(|e| Error::Internal(format!("catalog is not UTF-8: {e}")))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(sluice_connectors::Error::from(e).into()),
        }
    }

    /// Replaces the stored script.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn save(&self, script: &str) -> Result<()> {
        self.store
            .put(&self.path, PutPayload::from(script.as_bytes().to_vec()))
            .await
            .map_err(sluice_connectors::Error::from)?;
        Ok(())
    }

    fn view_path(&self, name: &str) -> Path {
        self.views.clone().join(format!("{name}.arrow"))
    }

    /// Saves a materialized view's rows as an Arrow IPC file.
    ///
    /// # Errors
    /// When encoding or the store fails.
    pub async fn save_view(
        &self,
        name: &str,
        schema: &SchemaRef,
        rows: &[RecordBatch],
    ) -> Result<()> {
        let mut buf = Vec::new();
        {
            let mut writer = FileWriter::try_new(&mut buf, schema)?;
            for b in rows {
                writer.write(b)?;
            }
            writer.finish()?;
        }
        self.store
            .put(&self.view_path(name), PutPayload::from(buf))
            .await
            .map_err(sluice_connectors::Error::from)?;
        Ok(())
    }

    /// The saved rows of a materialized view, if any.
    ///
    /// # Errors
    /// When the store fails or the file does not decode.
    pub async fn load_view(&self, name: &str) -> Result<Option<Vec<RecordBatch>>> {
        let bytes = match self.store.get(&self.view_path(name)).await {
            Ok(got) => got.bytes().await.map_err(sluice_connectors::Error::from)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(sluice_connectors::Error::from(e).into()),
        };
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)?;
        Ok(Some(reader.collect::<std::result::Result<Vec<_>, _>>()?))
    }

    /// Forgets a materialized view's saved rows.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn delete_view(&self, name: &str) -> Result<()> {
        match self.store.delete(&self.view_path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(sluice_connectors::Error::from(e).into()),
        }
    }
}
