//! What happens to a record that does not parse or does not fit the schema: skipped and
//! counted, a failed pipeline, or kept in a dead-letter file (`on_error`).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::metrics::ConnectorMetrics;
use crate::options::Options;

/// The `on_error` policy of a source.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OnError {
    /// Skip the record, count it in `bad_records` and log where it came from.
    #[default]
    Skip,
    /// Stop the pipeline with the record's error.
    Fail,
    /// Skip and count it, and append the raw record to a file.
    DeadLetter(PathBuf),
}

impl OnError {
    /// Reads `on_error` and `dead_letter_path` from the options.
    ///
    /// # Errors
    /// On an unknown policy, or `dead_letter` without `dead_letter_path`.
    pub fn from_options(options: &mut Options) -> Result<Self> {
        let policy = options.take_choice("on_error", &["skip", "fail", "dead_letter"])?;
        let path = options.take_string("dead_letter_path");
        match (policy.as_deref(), path) {
            (None | Some("skip"), None) => Ok(OnError::Skip),
            (Some("fail"), None) => Ok(OnError::Fail),
            // A URL would become a local folder named `s3:`: refuse it rather than surprise.
            (Some("dead_letter"), Some(p)) if p.contains("://") => Err(Error::option(
                options.connector(),
                format!("option 'dead_letter_path' must be a local file path, not '{p}'"),
            )),
            (Some("dead_letter"), Some(p)) => Ok(OnError::DeadLetter(PathBuf::from(p))),
            (Some("dead_letter"), None) => Err(Error::option(
                options.connector(),
                "on_error = 'dead_letter' needs the option 'dead_letter_path'",
            )),
            (Some(other), None) => Err(Error::Internal(format!(
                "unhandled on_error policy '{other}'"
            ))),
            (_, Some(_)) => Err(Error::option(
                options.connector(),
                "option 'dead_letter_path' is only used with on_error = 'dead_letter'",
            )),
        }
    }
}

/// Applies an [`OnError`] policy and counts bad records.
#[derive(Debug)]
pub struct BadRecords {
    policy: OnError,
    metrics: std::sync::Arc<ConnectorMetrics>,
    dead_letter: Mutex<Option<std::fs::File>>,
}

/// How many bad records are logged one by one before logging only every thousandth.
const LOG_EACH: u64 = 20;

impl BadRecords {
    /// A handler for `policy` that counts into `metrics`.
    pub fn new(policy: OnError, metrics: std::sync::Arc<ConnectorMetrics>) -> Self {
        Self {
            policy,
            metrics,
            dead_letter: Mutex::new(None),
        }
    }

    /// Reports one bad record found at `location` (file and line, topic and offset).
    ///
    /// # Errors
    /// With `on_error = 'fail'`, the record's error; with a dead-letter file that cannot be
    /// written, that I/O error.
    pub fn report(&self, location: &str, message: &str, raw: &[u8]) -> Result<()> {
        if self.policy == OnError::Fail {
            return Err(Error::BadRecord {
                location: location.to_string(),
                message: message.to_string(),
            });
        }
        let n = self.metrics.bad_records.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= LOG_EACH || n.is_multiple_of(1000) {
            tracing::warn!(
                location,
                error = message,
                bad_records = n,
                "skipping bad record"
            );
        }
        if let OnError::DeadLetter(path) = &self.policy {
            let mut guard = self
                .dead_letter
                .lock()
                .map_err(|_| Error::Internal("dead-letter lock poisoned".into()))?;
            if guard.is_none() {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)?;
                }
                *guard = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)?,
                );
            }
            if let Some(file) = guard.as_mut() {
                file.write_all(raw)?;
                if !raw.ends_with(b"\n") {
                    file.write_all(b"\n")?;
                }
            }
        }
        Ok(())
    }
}
