//! Where files live: turns a path, glob or object_store URL (`s3://bucket/prefix`,
//! `file:///...`, `memory://...`) into an object store and the objects it names.
//!
//! S3 settings come from the standard AWS environment variables, each overridable by a
//! lower-case `aws_*` option on the statement (DESIGN.md §2).

use std::sync::{Arc, OnceLock};

use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};

/// A resolved location: a store, a prefix in it, and an optional glob over object paths.
#[derive(Debug, Clone)]
pub struct Location {
    /// The store holding the objects.
    pub store: Arc<dyn ObjectStore>,
    /// The object (or folder) the location names, without any glob part.
    pub prefix: Path,
    /// The glob the object paths must match, when the location had one.
    pub glob: Option<glob::Pattern>,
    /// The location as the user wrote it, for messages.
    pub display: String,
}

/// The process-wide in-memory store behind `memory://` URLs.
fn memory_store() -> Arc<dyn ObjectStore> {
    static MEMORY: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    Arc::clone(MEMORY.get_or_init(|| Arc::new(InMemory::new())))
}

/// Resolves `location` (a local path, glob or URL). `aws_options` are `aws_*` overrides.
///
/// # Errors
/// On an unsupported URL scheme, a bad glob, or a store that cannot be configured.
pub fn resolve(location: &str, aws_options: &[(String, String)]) -> Result<Location> {
    let display = location.to_string();
    // Split off the glob part: everything from the first path component holding a glob char.
    let (base, glob_str) = match location.find(['*', '?', '[']) {
        Some(pos) => {
            let cut = location[..pos].rfind('/').map(|i| i + 1).unwrap_or(0);
            (&location[..cut], Some(location))
        }
        None => (location, None),
    };
    if let Some((scheme, rest)) = location.split_once("://") {
        let url = url::Url::parse(&format!(
            "{scheme}://{}",
            base.split_once("://").map(|(_, r)| r).unwrap_or(rest)
        ))
        .map_err(|e| Error::Input(format!("'{location}' is not a valid URL: {e}")))?;
        if !aws_options.is_empty() && !matches!(scheme, "s3" | "s3a") {
            return Err(Error::Input(format!(
                "aws_* options apply to s3:// locations, not to '{location}'"
            )));
        }
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match scheme {
            "file" => {
                let p = std::path::Path::new(url.path());
                (
                    Arc::new(LocalFileSystem::new()),
                    path_of_local(p, location)?,
                )
            }
            "memory" => {
                let key = format!("{}{}", url.host_str().unwrap_or(""), url.path());
                (memory_store(), Path::from(key.trim_matches('/')))
            }
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .ok_or_else(|| Error::Input(format!("'{location}' names no bucket")))?;
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                for (k, v) in aws_options {
                    let key = k
                        .parse()
                        .map_err(|e| Error::Input(format!("option '{k}': {e}")))?;
                    builder = builder.with_config(key, v.clone());
                }
                (
                    Arc::new(builder.build()?),
                    Path::from(url.path().trim_matches('/')),
                )
            }
            other => {
                return Err(Error::Input(format!(
                    "'{location}': unsupported URL scheme '{other}' (use a path, file://, s3:// or memory://)"
                )));
            }
        };
        let glob = glob_str.map(|g| glob_for(&prefix, base, g)).transpose()?;
        return Ok(Location {
            store,
            prefix,
            glob,
            display,
        });
    }
    if !aws_options.is_empty() {
        return Err(Error::Input(format!(
            "aws_* options apply to s3:// locations, not to the local path '{location}'"
        )));
    }
    let base_path = if base.is_empty() { "." } else { base };
    let prefix = path_of_local(std::path::Path::new(base_path), location)?;
    let glob = glob_str.map(|g| glob_for(&prefix, base, g)).transpose()?;
    Ok(Location {
        store: Arc::new(LocalFileSystem::new()),
        prefix,
        glob,
        display,
    })
}

/// An absolute object path for a local path that may not exist yet.
fn path_of_local(p: &std::path::Path, location: &str) -> Result<Path> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()?.join(p)
    };
    // Normalise `.` and `..` without requiring the path to exist.
    let mut out = std::path::PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Path::from_absolute_path(&out).map_err(|e| Error::Input(format!("'{location}': {e}")))
}

fn glob_for(prefix: &Path, base: &str, full: &str) -> Result<glob::Pattern> {
    let tail = &full[base.len()..];
    let pattern = if prefix.as_ref().is_empty() {
        tail.to_string()
    } else {
        format!("{}/{}", prefix.as_ref(), tail)
    };
    glob::Pattern::new(&pattern)
        .map_err(|e| Error::Input(format!("'{full}' is not a valid glob: {e}")))
}

impl Location {
    /// The objects this location names, sorted by path: the object itself, every visible
    /// object under a folder (names starting with `.` or `_` are skipped, as Hive does),
    /// or every object matching the glob.
    ///
    /// # Errors
    /// When nothing exists there (the message names the location), or the store fails.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>> {
        if self.glob.is_none() {
            match self.store.head(&self.prefix).await {
                Ok(meta) => return Ok(vec![meta]),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&self.prefix))
            .try_filter(|m| {
                // Only the parts below the prefix the user named can hide a file.
                let below = m
                    .location
                    .prefix_match(&self.prefix)
                    .map(|parts| parts.collect::<Vec<_>>())
                    .unwrap_or_default();
                let visible = below.iter().all(|p| !p.as_ref().starts_with(['.', '_']));
                let matches = self
                    .glob
                    .as_ref()
                    .is_none_or(|g| g.matches(m.location.as_ref()));
                futures::future::ready(visible && matches)
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(vec![]),
                e => Err(e),
            })?;
        if objects.is_empty() && self.glob.is_none() {
            return Err(Error::Input(format!(
                "no such file or directory: '{}'",
                self.display
            )));
        }
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_file_folder_and_glob() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.csv", "b.csv", "c.json", "_hidden.csv"] {
            std::fs::write(dir.path().join(name), "x\n").unwrap();
        }
        let d = dir.path().to_str().unwrap();
        assert_eq!(
            resolve(&format!("{d}/a.csv"), &[])
                .unwrap()
                .list()
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(resolve(d, &[]).unwrap().list().await.unwrap().len(), 3);
        assert_eq!(
            resolve(&format!("{d}/*.csv"), &[])
                .unwrap()
                .list()
                .await
                .unwrap()
                .len(),
            2
        );
        let err = resolve(&format!("{d}/missing.csv"), &[])
            .unwrap()
            .list()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("missing.csv"), "{err}");
    }
}
