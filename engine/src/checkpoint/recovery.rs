//! Recovery's side of the two-phase commit: the sink output staged by the checkpoint a
//! pipeline resumes from is committed (its commit may not have happened before a crash).
//! When a sink answers that the output is lost, a Kafka transaction that only the dead
//! process could have committed, recovery resumes from the checkpoint before instead, so
//! that the restarted pipeline writes those rows again.

use sluice_connectors::{Committed, SinkConfig};

use crate::checkpoint::{CheckpointStore, Restored};
use crate::error::{Error, Result};

/// Commits what `restored` staged for sink `name`, falling back to older checkpoints while
/// the sink reports the output lost. Returns the checkpoint to resume from.
///
/// # Errors
/// When the sink or the store fails, or the output is lost and no earlier checkpoint is
/// kept to resume from.
pub(crate) async fn commit_restored(
    store: &CheckpointStore,
    name: &str,
    sink: &dyn SinkConfig,
    mut restored: Option<Restored>,
) -> Result<Option<Restored>> {
    let mut fell_back = None;
    while let Some(r) = &restored {
        let id = r.manifest.id;
        let mut lost = false;
        for pending in &r.manifest.sink_pending {
            if sink.commit(id, pending).await? == Committed::Lost {
                lost = true;
                break;
            }
        }
        if !lost {
            break;
        }
        // A checkpoint is stored only after the one before it was committed: the output
        // of the checkpoint recovery fell back to cannot be lost too.
        if let Some(newest) = fell_back {
            return Err(Error::Checkpoint(format!(
                "pipeline '{name}': the sink reports the output of checkpoint {id} lost, though checkpoint {newest} was stored after its commit; the sink's commit record is inconsistent"
            )));
        }
        fell_back = Some(id);
        let before = store.load_latest_before(id).await?;
        // Checkpoint ids start at 1: before the first one, no output was ever committed.
        if before.is_none() && id > 1 {
            return Err(Error::Checkpoint(format!(
                "pipeline '{name}': the sink output of checkpoint {id} was lost before its commit, and no earlier checkpoint is left to resume from and write it again (a checkpoint is deleted only after a newer one is committed: were checkpoints removed by hand?)"
            )));
        }
        tracing::warn!(
            pipeline = name,
            checkpoint = id,
            resume_from = before.as_ref().map(|b| b.manifest.id),
            "the sink output of the newest checkpoint was lost before its commit; resuming from the one before, which writes it again"
        );
        restored = before;
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use datafusion::arrow::datatypes::SchemaRef;
    use object_store::ObjectStore;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use sluice_connectors::{Sink, SinkContext};

    use super::*;
    use crate::checkpoint::Manifest;

    /// A sink whose staged output is `{"checkpoint": n}`, lost for the checkpoints in
    /// `lost` (as a Kafka transaction whose producer died is), visible otherwise.
    #[derive(Debug)]
    struct Staging {
        lost: Vec<u64>,
        asked: Mutex<Vec<u64>>,
    }

    #[async_trait::async_trait]
    impl SinkConfig for Staging {
        async fn open(
            &self,
            _schema: SchemaRef,
            _ctx: SinkContext,
        ) -> sluice_connectors::Result<Box<dyn Sink>> {
            Err(sluice_connectors::Error::Internal("not opened here".into()))
        }

        async fn commit(
            &self,
            checkpoint: u64,
            pending: &serde_json::Value,
        ) -> sluice_connectors::Result<Committed> {
            assert_eq!(pending["checkpoint"], checkpoint);
            self.asked.lock().unwrap().push(checkpoint);
            Ok(if self.lost.contains(&checkpoint) {
                Committed::Lost
            } else {
                Committed::Visible
            })
        }
    }

    async fn store_with(ids: &[u64]) -> CheckpointStore {
        let fs: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = CheckpointStore::new(fs, Path::from("checkpoints/p"));
        for &id in ids {
            let manifest = Manifest {
                sink_pending: vec![serde_json::json!({ "checkpoint": id })],
                ..Manifest::empty(id)
            };
            store.write(manifest, Vec::new()).await.unwrap();
        }
        store
    }

    async fn resume(store: &CheckpointStore, sink: &Staging) -> Result<Option<u64>> {
        let latest = store.load_latest().await?;
        let restored = commit_restored(store, "p", sink, latest).await?;
        Ok(restored.map(|r| r.manifest.id))
    }

    #[tokio::test]
    async fn lost_output_resumes_from_the_checkpoint_before() {
        let store = store_with(&[3, 4, 5]).await;
        let sink = Staging {
            lost: vec![5],
            asked: Mutex::default(),
        };
        assert_eq!(resume(&store, &sink).await.unwrap(), Some(4));
        assert_eq!(*sink.asked.lock().unwrap(), vec![5, 4]);
    }

    #[tokio::test]
    async fn visible_output_resumes_from_the_newest() {
        let store = store_with(&[3, 4, 5]).await;
        let sink = Staging {
            lost: vec![],
            asked: Mutex::default(),
        };
        assert_eq!(resume(&store, &sink).await.unwrap(), Some(5));
        assert_eq!(*sink.asked.lock().unwrap(), vec![5]);
    }

    #[tokio::test]
    async fn output_lost_twice_is_an_error_rather_than_a_rerun_from_further_back() {
        let store = store_with(&[3, 4, 5]).await;
        let sink = Staging {
            lost: vec![4, 5],
            asked: Mutex::default(),
        };
        let err = resume(&store, &sink).await.unwrap_err().to_string();
        assert!(err.contains("inconsistent"), "{err}");
    }

    #[tokio::test]
    async fn lost_output_of_the_first_checkpoint_resumes_from_the_start() {
        let store = store_with(&[1]).await;
        let sink = Staging {
            lost: vec![1],
            asked: Mutex::default(),
        };
        assert_eq!(resume(&store, &sink).await.unwrap(), None);
    }

    #[tokio::test]
    async fn lost_output_with_no_older_checkpoint_kept_is_an_error() {
        // Checkpoints 1 to 6 were taken and only 7 is kept: starting over would write
        // again what 1 to 6 committed.
        let store = store_with(&[7]).await;
        let sink = Staging {
            lost: vec![7],
            asked: Mutex::default(),
        };
        let err = resume(&store, &sink).await.unwrap_err().to_string();
        assert!(err.contains("no earlier checkpoint is left"), "{err}");
    }
}
