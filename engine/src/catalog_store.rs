//! Keeps a session's catalog under the storage root: the CREATE statements of every live
//! source, view, materialized view and sink, in creation order, as one SQL script that a
//! restarted server replays. Written whole and atomically (object_store `put`) after each
//! change.

use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// The catalog file under a storage root.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

impl CatalogStore {
    /// The catalog of the storage root `root` (a local folder or an object_store URL).
    ///
    /// # Errors
    /// When the root cannot be resolved.
    pub fn open(root: &str) -> Result<Self> {
        let location = sluice_connectors::store::resolve(root, &[])?;
        let path = location.prefix.clone().join("catalog.sql");
        Ok(Self {
            store: location.store,
            path,
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
}
