//! The manifest of one checkpoint: what it covers (source positions, state files with their
//! checksums, the sink's staged output) and a checksum over itself. A checkpoint exists once
//! its manifest is written, and only then.

use serde::{Deserialize, Serialize};
use twox_hash::XxHash64;

use crate::error::{Error, Result};

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Where one source task stood at the barrier.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceEntry {
    /// The source task's number in the pipeline.
    pub task: usize,
    /// The connector's position, if it can resume.
    pub position: Option<serde_json::Value>,
    /// The source's watermark.
    pub watermark: i64,
}

/// One state file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// The file's name inside the checkpoint's folder.
    pub name: String,
    /// Whose state it is.
    pub owner: StateOwner,
    /// Its length in bytes.
    pub bytes: u64,
    /// xxHash64 of its bytes (seed 0), checked when it is loaded.
    pub xxhash64: u64,
}

/// Whose state a file holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum StateOwner {
    /// Operator `op` of chain task `task`.
    Operator {
        /// The chain task.
        task: usize,
        /// The operator's place in the chain.
        op: usize,
    },
    /// The sink (the rows of a materialized view).
    Sink,
}

/// A checkpoint's manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The checkpoint's number.
    pub id: u64,
    /// The pipeline it belongs to.
    pub pipeline: String,
    /// A fingerprint of the plan the state belongs to.
    pub plan: String,
    /// When its last acknowledgement arrived, in milliseconds since the Unix epoch.
    pub completed_unix_ms: u64,
    /// From the first barrier to the manifest, in milliseconds.
    pub duration_ms: u64,
    /// The pipeline's last checkpoint: its input ended (or it was stopped, see `stopped`).
    pub last: bool,
    /// Whether the last checkpoint was taken on a stop rather than at the end of the input.
    pub stopped: bool,
    /// Per source task.
    pub sources: Vec<SourceEntry>,
    /// State files.
    pub files: Vec<FileEntry>,
    /// The sink's staged output, to commit: its own pre-commit, after those of earlier
    /// checkpoints that failed to be written.
    pub sink_pending: Vec<serde_json::Value>,
    /// xxHash64 of the manifest serialised with this field at 0.
    pub checksum: u64,
}

#[cfg(test)]
impl Manifest {
    /// Checkpoint `id` of pipeline "p", with nothing in it: for tests to fill in.
    pub(crate) fn empty(id: u64) -> Self {
        Self {
            version: MANIFEST_VERSION,
            id,
            pipeline: "p".into(),
            plan: "x".into(),
            completed_unix_ms: 0,
            duration_ms: 0,
            last: false,
            stopped: false,
            sources: Vec::new(),
            files: Vec::new(),
            sink_pending: Vec::new(),
            checksum: 0,
        }
    }
}

impl Manifest {
    /// Total bytes of its state files.
    pub fn state_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Serialises the manifest with its checksum filled in.
    ///
    /// # Errors
    /// When serialisation fails (it does not for these types).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut m = self.clone();
        m.checksum = 0;
        let body = serde_json::to_vec(&m).map_err(json_error)?;
        m.checksum = XxHash64::oneshot(0, &body);
        serde_json::to_vec_pretty(&m).map_err(json_error)
    }

    /// Parses a manifest and checks its checksum and version.
    ///
    /// # Errors
    /// When it does not parse, its checksum does not match, or its version is unknown.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(json_error)?;
        let mut zeroed = m.clone();
        zeroed.checksum = 0;
        let body = serde_json::to_vec(&zeroed).map_err(json_error)?;
        if XxHash64::oneshot(0, &body) != m.checksum {
            return Err(Error::Checkpoint("manifest checksum mismatch".into()));
        }
        if m.version != MANIFEST_VERSION {
            return Err(Error::Checkpoint(format!(
                "manifest version {} is not {MANIFEST_VERSION}",
                m.version
            )));
        }
        Ok(m)
    }
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Checkpoint(format!("manifest: {e}"))
}

/// The checksum of a state file.
pub fn checksum(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(0, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            id: 3,
            pipeline: "p".into(),
            plan: "abc".into(),
            completed_unix_ms: 1,
            duration_ms: 2,
            last: false,
            stopped: false,
            sources: vec![SourceEntry {
                task: 0,
                position: Some(serde_json::json!({"event": 42})),
                watermark: 7,
            }],
            files: vec![FileEntry {
                name: "op-1-0.arrow".into(),
                owner: StateOwner::Operator { task: 1, op: 0 },
                bytes: 10,
                xxhash64: 99,
            }],
            sink_pending: Vec::new(),
            checksum: 0,
        }
    }

    #[test]
    fn round_trips_and_detects_corruption() {
        let m = manifest();
        let bytes = m.encode().unwrap();
        let back = Manifest::decode(&bytes).unwrap();
        assert_eq!(back.sources, m.sources);
        assert_eq!(back.files, m.files);
        let text = String::from_utf8(bytes).unwrap().replace("42", "43");
        let err = Manifest::decode(text.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
