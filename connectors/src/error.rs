//! The connectors crate's error type: what went wrong reading or writing the outside world.

use datafusion::arrow::error::ArrowError;

/// Errors raised by sources, sinks and formats.
///
/// Every variant says who caused it: the user (a bad option, a missing file, a
/// record that does not parse), an external system (an object store or broker
/// that failed), or Sluice itself (a bug).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is unknown, missing or has the wrong type. Raised at CREATE time.
    #[error("{connector} connector: {message}")]
    Option {
        /// The connector whose options were given.
        connector: String,
        /// What is wrong, naming the option.
        message: String,
    },
    /// An input the user pointed at does not exist or cannot be read as asked.
    #[error("{0}")]
    Input(String),
    /// A record did not parse or did not fit the declared schema, and `on_error = 'fail'`.
    #[error("bad record at {location}: {message}")]
    BadRecord {
        /// Where the record came from: file and line, topic and offset.
        location: String,
        /// Why it was rejected.
        message: String,
    },
    /// An object store failed (external: may succeed on retry).
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// A broker, database or other service failed (external: may succeed on retry).
    #[error("{service}: {message}")]
    Service {
        /// The service: "kafka", "mqtt", "nats", "postgres".
        service: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Local I/O failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Arrow failed while building or converting batches.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// Parquet failed while reading or writing.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// DataFusion failed (casts, expression evaluation).
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A broken invariant inside Sluice: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who caused an error, as the engine reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad SQL, a bad option, a bad record, a missing input.
    User,
    /// A store or broker failed; retrying may help.
    External,
    /// A bug in Sluice.
    Internal,
}

impl Error {
    /// Shorthand for an option error.
    pub fn option(connector: &str, message: impl Into<String>) -> Self {
        Error::Option {
            connector: connector.to_string(),
            message: message.into(),
        }
    }

    /// Shorthand for a service error.
    pub fn service(service: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Service {
            service,
            message: message.to_string(),
        }
    }

    /// Who caused this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Option { .. } | Error::Input(_) | Error::BadRecord { .. } => ErrorKind::User,
            Error::ObjectStore(_) | Error::Io(_) | Error::Service { .. } => ErrorKind::External,
            Error::Arrow(_) | Error::Parquet(_) | Error::DataFusion(_) | Error::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }
}

/// Result with the connectors' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
