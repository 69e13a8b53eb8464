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
    /// A task's downstream ended first: the downstream's own error says why.
    #[error("a downstream task stopped early")]
    DownstreamClosed,
    /// A pipeline's state passed its memory limit.
    #[error("{0}")]
    StateLimit(String),
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
            Error::DataFusion(e) => datafusion_kind(e),
            Error::Arrow(e) => arrow_kind(e),
            Error::Checkpoint(_) => ErrorKind::External,
            Error::IncompatibleState(_) | Error::StateLimit(_) => ErrorKind::User,
            Error::Internal(_) | Error::DownstreamClosed => ErrorKind::Internal,
        }
    }
}

/// Who caused a DataFusion error: planning errors, arithmetic on the user's values (a
/// division by zero, an overflow, a cast that fails) and a query past its memory are the
/// user's; the rest are bugs.
fn datafusion_kind(e: &DataFusionError) -> ErrorKind {
    match e.find_root() {
        DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::SQL(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::ResourcesExhausted(_) => ErrorKind::User,
        DataFusionError::ArrowError(a, _) => arrow_kind(a),
        DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => ErrorKind::External,
        _ => ErrorKind::Internal,
    }
}

/// Who caused an Arrow error: the kernels' complaints about values are the user's.
fn arrow_kind(e: &ArrowError) -> ErrorKind {
    match e {
        ArrowError::DivideByZero
        | ArrowError::ArithmeticOverflow(_)
        | ArrowError::CastError(_)
        | ArrowError::ParseError(_)
        | ArrowError::InvalidArgumentError(_)
        | ArrowError::ComputeError(_) => ErrorKind::User,
        _ => ErrorKind::Internal,
    }
}

/// Builds an [`Error::Internal`] from a format string: a broken invariant, a bug.
///
/// ```
/// # use sluice_engine::internal_err;
/// let e = internal_err!("pane {} vanished", 3);
/// assert_eq!(e.to_string(), "internal error: pane 3 vanished");
/// ```
#[macro_export]
macro_rules! internal_err {
    ($($arg:tt)*) => {
        $crate::error::Error::Internal(format!($($arg)*))
    };
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
