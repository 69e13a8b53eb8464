//! Two-phase commit for the sinks that write whole part files (`parquet`, `file`).
//!
//! Without checkpoints a finished part file is stored under its final name at once,
//! `part-<seq>-<unique>.<ext>`. With checkpoints it is first staged as
//! `.part-<sink>-<seq>-<unique>.<ext>.pending` (a hidden name that does not end in the
//! format's extension, so DuckDB, Spark and pyarrow skip it); the checkpoint's pre-commit
//! lists the staged files, and once the checkpoint is complete the commit renames each to
//! `part-<sink>-c<checkpoint>-<seq>-<unique>.<ext>`. The checkpoint number in a committed
//! name lets recovery remove the files of checkpoints after the one it restores, and the
//! sink's name keeps it from touching another sink's files in the same folder.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The suffix of staged part files.
const STAGED_SUFFIX: &str = ".pending";

/// A name as it appears in file (and other service-side) names: every character but ASCII
/// letters, digits and `_` becomes `_`, so no '-', which separates the parts.
pub fn tag(sink: &str) -> String {
    sink.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One staged file and the name it takes when committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rename {
    from: String,
    to: String,
}

/// The part files of one running sink.
#[derive(Debug)]
pub(crate) struct PartFiles {
    store: Arc<dyn ObjectStore>,
    two_phase: bool,
    /// Staged since the last pre-commit: the staging path, and the folder and name the
    /// file takes once committed (without the checkpoint number).
    staged: Vec<(Path, Path, String)>,
    seq: u64,
    unique: String,
    tag: String,
}

impl PartFiles {
    /// Part files for sink `sink` writing to `store`; staged until commit if `two_phase`.
    pub(crate) fn new(store: Arc<dyn ObjectStore>, two_phase: bool, sink: &str) -> Self {
        Self {
            store,
            two_phase,
            staged: Vec::new(),
            seq: 0,
            unique: unique_suffix(),
            tag: tag(sink),
        }
    }

    /// Stores a finished part file in `folder`: under its final name, or staged.
    /// Returns where it went.
    ///
    /// # Errors
    /// When the store fails.
    pub(crate) async fn put(
        &mut self,
        folder: &Path,
        extension: &str,
        data: Vec<u8>,
    ) -> Result<Path> {
        let name = format!("{:05}-{}.{extension}", self.seq, self.unique);
        self.seq += 1;
        let path = if self.two_phase {
            let path = folder
                .clone()
                .join(format!(".part-{}-{name}{STAGED_SUFFIX}", self.tag));
            self.staged.push((path.clone(), folder.clone(), name));
            path
        } else {
            folder.clone().join(format!("part-{name}"))
        };
        self.store.put(&path, PutPayload::from(data)).await?;
        Ok(path)
    }

    /// The files staged since the last call, as the pending part of checkpoint
    /// `checkpoint`'s pre-commit.
    pub(crate) fn pre_commit(&mut self, checkpoint: u64) -> Option<serde_json::Value> {
        let renames: Vec<Rename> = self
            .staged
            .drain(..)
            .map(|(from, folder, name)| Rename {
                from: from.to_string(),
                to: folder
                    .join(format!("part-{}-c{checkpoint:08}-{name}", self.tag))
                    .to_string(),
            })
            .collect();
        if renames.is_empty() {
            None
        } else {
            serde_json::to_value(renames).ok()
        }
    }
}

/// Makes the files of a pre-commit visible. Idempotent: a file already renamed is skipped.
///
/// # Errors
/// When the store fails, or a staged file is gone without its committed name existing.
pub(crate) async fn commit(
    store: &Arc<dyn ObjectStore>,
    pending: &serde_json::Value,
) -> Result<()> {
    let renames: Vec<Rename> = serde_json::from_value(pending.clone())
        .map_err(|e| Error::Internal(format!("a sink's pending commit is unreadable: {e}")))?;
    for r in renames {
        let from = Path::from(r.from.as_str());
        let to = Path::from(r.to.as_str());
        match store.rename(&from, &to).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                if store.head(&to).await.is_err() {
                    return Err(Error::Internal(format!(
                        "staged file '{from}' is gone and '{to}' does not exist: its rows are lost"
                    )));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes, under `root`, every file of sink `sink` that is staged (no complete checkpoint
/// covers it any more) or committed by a checkpoint after `restored`.
///
/// # Errors
/// When the store cannot be listed or a file cannot be deleted.
pub(crate) async fn recover(
    store: &Arc<dyn ObjectStore>,
    root: &Path,
    sink: &str,
    restored: Option<u64>,
) -> Result<()> {
    let staged_prefix = format!(".part-{}-", tag(sink));
    let committed_prefix = format!("part-{}-c", tag(sink));
    let listed: Vec<object_store::ObjectMeta> = match store.list(Some(root)).try_collect().await {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut removed = 0usize;
    for meta in listed {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let stale = if name.starts_with(&staged_prefix) && name.ends_with(STAGED_SUFFIX) {
            true
        } else if let Some(rest) = name.strip_prefix(&committed_prefix) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            match digits.parse::<u64>() {
                Ok(c) => restored.is_none_or(|r| c > r),
                Err(_) => false,
            }
        } else {
            false
        };
        if stale {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    if removed > 0 {
        tracing::info!(folder = %root, removed, "removed sink files no complete checkpoint covers");
    }
    Ok(())
}

/// A suffix that keeps two runs writing into the same folder from overwriting each other.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn staged_files_become_visible_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let mut parts = PartFiles::new(Arc::clone(&store), true, "s");
        let root = Path::from("out");
        parts.put(&root, "csv", b"a\n1\n".to_vec()).await.unwrap();
        let out = dir.path().join("out");
        assert!(
            names(&out)
                .iter()
                .all(|n| n.starts_with(".part-") && n.ends_with(".pending"))
        );
        let pending = parts.pre_commit(7).unwrap();
        commit(&store, &pending).await.unwrap();
        // Committing twice (recovery after a crash during commit) is fine.
        commit(&store, &pending).await.unwrap();
        let committed = names(&out);
        assert_eq!(committed.len(), 1);
        assert!(
            committed[0].starts_with("part-s-c00000007-"),
            "{committed:?}"
        );
        assert!(parts.pre_commit(8).is_none(), "nothing staged since");
    }

    #[tokio::test]
    async fn recovery_removes_staged_and_later_files() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let root = Path::from("out");
        let mut parts = PartFiles::new(Arc::clone(&store), true, "s");
        for checkpoint in 1..=3 {
            parts.put(&root, "csv", b"x\n".to_vec()).await.unwrap();
            let pending = parts.pre_commit(checkpoint).unwrap();
            commit(&store, &pending).await.unwrap();
        }
        parts.put(&root, "csv", b"x\n".to_vec()).await.unwrap();
        // Another sink's files in the same folder are not this sink's to remove.
        let mut other = PartFiles::new(Arc::clone(&store), true, "other");
        other.put(&root, "csv", b"y\n".to_vec()).await.unwrap();
        let pending = other.pre_commit(9).unwrap();
        commit(&store, &pending).await.unwrap();
        other.put(&root, "csv", b"y\n".to_vec()).await.unwrap();
        recover(&store, &root, "s", Some(2)).await.unwrap();
        let left = names(&dir.path().join("out"));
        assert_eq!(left.len(), 4, "{left:?}");
        let mine: Vec<_> = left.iter().filter(|n| n.contains("part-s-")).collect();
        assert_eq!(mine.len(), 2, "{left:?}");
        assert!(mine.iter().all(|n| n.starts_with("part-s-c0000000")));
        assert!(!left.iter().any(|n| n.starts_with("part-s-c00000003")));
    }
}
