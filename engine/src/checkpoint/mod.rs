//! Exactly-once checkpoints: barriers injected by the sources, aligned snapshots of operator
//! state, two-phase-commit sinks, manifests with checksums under the data dir, and recovery
//! from the newest complete checkpoint.
//!
//! The [`coordinator`] runs beside each pipeline: it asks the source tasks for a barrier
//! every interval, gathers what every task acknowledges (positions, state, staged sink
//! output), writes the checkpoint through the [`store`] and then commits the sink. At a
//! restart, [`recovery`] commits what the checkpoint resumed from staged.

pub mod coordinator;
pub mod manifest;
pub(crate) mod recovery;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;

pub use manifest::Manifest;
pub use store::{CheckpointStore, Restored};

/// Checkpoints kept unless `checkpoint_retention` says otherwise.
pub const DEFAULT_RETENTION: usize = 3;

/// How a process checkpoints its pipelines.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    /// The storage root's store.
    pub store: Arc<dyn ObjectStore>,
    /// The storage root's prefix; checkpoints go under `checkpoints/`.
    pub prefix: Path,
    /// Time between checkpoints.
    pub interval: Duration,
    /// Complete checkpoints kept per pipeline; older ones are deleted.
    pub retention: usize,
}

impl CheckpointConfig {
    /// Checkpoints under the storage root `root` (a local folder or an object_store URL).
    ///
    /// # Errors
    /// When the root cannot be resolved.
    pub fn for_root(root: &str, interval: Duration, retention: usize) -> crate::Result<Self> {
        let location = sluice_connectors::store::resolve(root, &[])?;
        Ok(Self {
            store: location.store,
            prefix: location.prefix,
            interval,
            retention: retention.max(1),
        })
    }

    /// The checkpoints of pipeline `name`.
    pub fn store_for(&self, name: &str) -> CheckpointStore {
        CheckpointStore::new(
            Arc::clone(&self.store),
            self.prefix.clone().join("checkpoints").join(name),
        )
    }
}

/// A pipeline's checkpoint counters.
#[derive(Debug, Default)]
pub struct CheckpointMetrics {
    /// Checkpoints completed since the pipeline started.
    pub completed: AtomicU64,
    /// Checkpoints that could not be written.
    pub failed: AtomicU64,
    /// The newest complete checkpoint's number (0: none).
    pub last_id: AtomicU64,
    /// Its duration from the first barrier to the manifest, in milliseconds.
    pub last_duration_ms: AtomicU64,
    /// Its state size in bytes.
    pub last_bytes: AtomicU64,
    /// When it completed, in milliseconds since the Unix epoch (0: never).
    pub last_completed_unix_ms: AtomicU64,
    /// How long loading the checkpoint the pipeline started from took, in milliseconds.
    pub restore_ms: AtomicU64,
    /// The checkpoint the pipeline started from (0: none).
    pub restored_id: AtomicU64,
}

impl CheckpointMetrics {
    /// Milliseconds since the newest complete checkpoint, if there is one.
    pub fn age_ms(&self) -> Option<u64> {
        let last = self.last_completed_unix_ms.load(Ordering::Relaxed);
        (last > 0).then(|| now_unix_ms().saturating_sub(last))
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
