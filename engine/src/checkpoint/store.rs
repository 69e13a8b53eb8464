//! Where one pipeline's checkpoints live: in `<data dir>/checkpoints/<pipeline>/`, checkpoint
//! `n` is the Arrow IPC state files `chk-<n>.<owner>.arrow` and, written last,
//! `chk-<n>.manifest.json`. (Flat names rather than a folder per checkpoint, so that
//! deleting old checkpoints leaves no empty folders behind on a local disk.) Loading checks
//! every checksum and falls back to the previous checkpoint when one does not hold.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::arrow::record_batch::RecordBatch;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::checkpoint::manifest::{FileEntry, Manifest, StateOwner, checksum};
use crate::error::{Error, Result};

/// The manifest's file name suffix; a checkpoint without it does not count.
const MANIFEST: &str = "manifest.json";

/// A checkpoint read back: its manifest and its state.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The manifest.
    pub manifest: Manifest,
    /// Operator state by (chain task, operator).
    pub operators: BTreeMap<(usize, usize), RecordBatch>,
    /// The sink's state (a materialized view's rows).
    pub sink_state: Vec<RecordBatch>,
}

/// One pipeline's checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    root: Path,
}

fn store_error(e: object_store::Error) -> Error {
    Error::Checkpoint(e.to_string())
}

impl CheckpointStore {
    /// The checkpoints under `root` in `store`.
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        Self { store, root }
    }

    /// Where they are, for messages.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of file `name` of checkpoint `id`.
    fn file(&self, id: u64, name: &str) -> Path {
        self.root.clone().join(format!("chk-{id:010}.{name}"))
    }

    /// The checkpoint a file name belongs to.
    fn id_of(name: &str) -> Option<u64> {
        let rest = name.strip_prefix("chk-")?;
        rest.split('.').next()?.parse().ok()
    }

    async fn files(&self) -> Result<Vec<object_store::ObjectMeta>> {
        match self.store.list_with_delimiter(Some(&self.root)).await {
            Ok(l) => Ok(l.objects),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(store_error(e)),
        }
    }

    /// The numbers of every checkpoint with a file, complete or not, ascending.
    ///
    /// # Errors
    /// When the store cannot be listed.
    pub async fn ids(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self
            .files()
            .await?
            .iter()
            .filter_map(|m| m.location.filename().and_then(Self::id_of))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// Writes the state files, then the manifest (with `files` filled in): from then on
    /// the checkpoint counts. Returns the manifest as written.
    ///
    /// # Errors
    /// When a file cannot be encoded or stored.
    pub async fn write(
        &self,
        mut manifest: Manifest,
        states: Vec<(StateOwner, Vec<RecordBatch>)>,
    ) -> Result<Manifest> {
        let id = manifest.id;
        manifest.files.clear();
        for (owner, batches) in states {
            let Some(first) = batches.first() else {
                continue;
            };
            let mut writer = FileWriter::try_new(Vec::new(), &first.schema())?;
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()?;
            let bytes = writer.into_inner()?;
            let name = match owner {
                StateOwner::Operator { task, op } => format!("operator-{task}-{op}.arrow"),
                StateOwner::Sink => "sink.arrow".to_string(),
            };
            manifest.files.push(FileEntry {
                name: name.clone(),
                owner,
                bytes: bytes.len() as u64,
                xxhash64: checksum(&bytes),
            });
            self.store
                .put(&self.file(id, &name), PutPayload::from(bytes))
                .await
                .map_err(store_error)?;
        }
        let encoded = manifest.encode()?;
        self.store
            .put(&self.file(id, MANIFEST), PutPayload::from(encoded))
            .await
            .map_err(store_error)?;
        Ok(manifest)
    }

    /// Reads checkpoint `id`, checking every checksum.
    ///
    /// # Errors
    /// When it has no manifest, a file is missing, or a checksum does not match.
    pub async fn load(&self, id: u64) -> Result<Restored> {
        let manifest = Manifest::decode(&self.read(&self.file(id, MANIFEST)).await?)?;
        if manifest.id != id {
            return Err(Error::Checkpoint(format!(
                "the manifest of checkpoint {id} says it is checkpoint {}",
                manifest.id
            )));
        }
        let mut operators = BTreeMap::new();
        let mut sink_state = Vec::new();
        for file in &manifest.files {
            let bytes = self.read(&self.file(id, &file.name)).await?;
            if bytes.len() as u64 != file.bytes || checksum(&bytes) != file.xxhash64 {
                return Err(Error::Checkpoint(format!(
                    "state file '{}' of checkpoint {id} fails its checksum",
                    file.name
                )));
            }
            let reader = FileReader::try_new(Cursor::new(bytes), None)?;
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
            match file.owner {
                StateOwner::Operator { task, op } => {
                    if let Some(b) = batches.into_iter().next() {
                        operators.insert((task, op), b);
                    }
                }
                StateOwner::Sink => sink_state = batches,
            }
        }
        Ok(Restored {
            manifest,
            operators,
            sink_state,
        })
    }

    /// A file's bytes. A missing file is a damaged or incomplete checkpoint
    /// ([`Error::Checkpoint`]); any other failure is the store's ([`Error::Connector`]), which
    /// must not be mistaken for damage.
    async fn read(&self, path: &Path) -> Result<Vec<u8>> {
        let got = match self.store.get(path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::Checkpoint(format!("'{path}' is missing")));
            }
            Err(e) => return Err(sluice_connectors::Error::from(e).into()),
        };
        Ok(got
            .bytes()
            .await
            .map_err(sluice_connectors::Error::from)?
            .to_vec())
    }

    /// The newest checkpoint that loads with every checksum intact. Newer ones that do
    /// not (incomplete, or corrupted) are skipped with a warning.
    ///
    /// # Errors
    /// When the store cannot be listed or read: a store outage is not taken for damage,
    /// since falling back to an older checkpoint removes the sink output of newer ones.
    pub async fn load_latest(&self) -> Result<Option<Restored>> {
        self.load_latest_before(u64::MAX).await
    }

    /// Like [`CheckpointStore::load_latest`], among the checkpoints older than `before`:
    /// where recovery resumes when the newest one's sink output was lost.
    ///
    /// # Errors
    /// When the store cannot be listed or read.
    pub async fn load_latest_before(&self, before: u64) -> Result<Option<Restored>> {
        for id in self
            .ids()
            .await?
            .into_iter()
            .rev()
            .filter(|&id| id < before)
        {
            match self.load(id).await {
                Ok(r) => return Ok(Some(r)),
                Err(e @ Error::Connector(_)) => return Err(e),
                Err(e) => tracing::warn!(
                    checkpoints = %self.root,
                    checkpoint = id,
                    error = %e,
                    "skipping a checkpoint that is incomplete or damaged; trying the one before"
                ),
            }
        }
        Ok(None)
    }

    /// The manifests of the complete checkpoints, oldest first.
    ///
    /// # Errors
    /// When the store cannot be listed.
    pub async fn manifests(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for id in self.ids().await? {
            if let Ok(bytes) = self.read(&self.file(id, MANIFEST)).await
                && let Ok(m) = Manifest::decode(&bytes)
            {
                out.push(m);
            }
        }
        Ok(out)
    }

    /// Deletes every checkpoint older than the `keep` newest complete ones up to `newest`.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn retain(&self, keep: usize, newest: u64) -> Result<()> {
        let files = self.files().await?;
        let complete: std::collections::BTreeSet<u64> = files
            .iter()
            .filter_map(|m| m.location.filename())
            .filter(|n| n.ends_with(MANIFEST))
            .filter_map(Self::id_of)
            .collect();
        // Only complete checkpoints count towards `keep`.
        let upto: Vec<u64> = complete.iter().copied().filter(|i| *i <= newest).collect();
        let Some(&cutoff) = upto
            .len()
            .checked_sub(keep.max(1))
            .and_then(|i| upto.get(i))
        else {
            return Ok(());
        };
        self.delete_where(|id| id < cutoff).await
    }

    /// Deletes every checkpoint (the pipeline was dropped).
    ///
    /// # Errors
    /// When the store fails.
    pub async fn delete_all(&self) -> Result<()> {
        self.delete_where(|_| true).await
    }

    async fn delete_where(&self, doomed: impl Fn(u64) -> bool) -> Result<()> {
        let files: Vec<object_store::ObjectMeta> = self
            .files()
            .await?
            .into_iter()
            .filter(|m| {
                m.location
                    .filename()
                    .and_then(Self::id_of)
                    .is_some_and(&doomed)
            })
            .collect();
        // Manifests go first, so that a half-deleted checkpoint never looks complete.
        let (manifests, rest): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|m| m.location.filename().is_some_and(|n| n.ends_with(MANIFEST)));
        for meta in manifests.into_iter().chain(rest) {
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_error(e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use object_store::local::LocalFileSystem;

    fn manifest(id: u64) -> Manifest {
        Manifest::empty(id)
    }

    fn state(v: i64) -> Vec<(StateOwner, Vec<RecordBatch>)> {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).unwrap();
        vec![(StateOwner::Operator { task: 1, op: 0 }, vec![batch])]
    }

    #[tokio::test]
    async fn a_damaged_newest_checkpoint_falls_back_and_retention_counts_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let store = CheckpointStore::new(fs, Path::from("checkpoints/p"));
        for id in 1..=4 {
            store
                .write(manifest(id), state(id as i64 * 10))
                .await
                .unwrap();
        }
        // Checkpoint 5 died before its manifest: it is not a checkpoint.
        let partial = dir
            .path()
            .join("checkpoints/p/chk-0000000005.operator-1-0.arrow");
        std::fs::write(&partial, b"half").unwrap();
        // Damage checkpoint 4's state.
        let four = dir
            .path()
            .join("checkpoints/p/chk-0000000004.operator-1-0.arrow");
        let mut bytes = std::fs::read(&four).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        std::fs::write(&four, bytes).unwrap();
        let restored = store.load_latest().await.unwrap().unwrap();
        assert_eq!(restored.manifest.id, 3);
        let v = restored.operators[&(1, 0)]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(v, 30);
        store.retain(2, 4).await.unwrap();
        assert_eq!(store.ids().await.unwrap(), vec![3, 4, 5]);
        assert_eq!(store.manifests().await.unwrap().len(), 2);
    }
}
