//! The engine's error type, which says who caused a failure: the user, an external
//! system, or Sluice itself.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;

/// Errors from running statements and pipelines.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Planning failed: bad SQL, an unknown name, an unsupported construct.
    #[error(transparent)]
    Plan(#[from] sluice_planner::Error),
    /// A connector failed: a bad option, a missing file, a bad record, a store outage.
    #[error(transparent)]
    Connector(#[from] sluice_connectors::Error),
    /// Arrow failed inside an operator.
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    /// DataFusion failed inside an operator or an ad-hoc query.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// A pipeline stopped with an error.
    #[error("pipeline '{pipeline}' failed: {source}")]
    Pipeline {
        /// The pipeline's name.
        pipeline: String,
        /// What went wrong.
        source: Box<Error>,
    },
    /// An error in one statement of a script.
    #[error("{at}: {source}")]
    AtStatement {
        /// "statement 2 (line 7)".
        at: String,
        /// The statement's error.
        source: Box<Error>,
    },
    /// A checkpoint could not be written or read back.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Saved state does not fit what is running now (the query changed since it was saved).
    #[error("{0}")]
    IncompatibleState(String),
    /// A broken invariant: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad SQL, a bad option, a bad record, a missing input: fix the input.
    User,
    /// A store or broker failed: retrying may help.
    External,
    /// A bug in Sluice.
    Internal,
}

impl Error {
    /// Who caused this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Plan(e) if e.is_user_error() => ErrorKind::User,
            Error::Plan(_) => ErrorKind::Internal,
            Error::Connector(e) => match e.kind() {
                sluice_connectors::ErrorKind::User => ErrorKind::User,
                sluice_connectors::ErrorKind::External => ErrorKind::External,
                sluice_connectors::ErrorKind::Internal => ErrorKind::Internal,
            },
            Error::Pipeline { source, .. } | Error::AtStatement { source, .. } => source.kind(),
            Error::DataFusion(
                DataFusionError::Plan(_)
                | DataFusionError::SchemaError(..)
                | DataFusionError::SQL(..),
            ) => ErrorKind::User,
            Error::Checkpoint(_) => ErrorKind::External,
            Error::IncompatibleState(_) => ErrorKind::User,
            Error::Arrow(_) | Error::DataFusion(_) | Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
