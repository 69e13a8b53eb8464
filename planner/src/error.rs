//! The planner's error type: every error here is about the SQL a user wrote, or a bug.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::TokenizerError;

/// Errors from parsing and planning Sluice SQL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SQL does not parse. The message carries the line and column.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The SQL parses but is not valid: an unknown table or column, a type error.
    #[error("{0}")]
    Plan(String),
    /// A valid query that a streaming pipeline cannot run (yet); names the construct.
    #[error("not supported in a streaming query: {0}")]
    Unsupported(String),
    /// An object the statement names does not exist.
    #[error("{kind} '{name}' does not exist")]
    NotFound {
        /// source, sink, view, ...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An object of that name exists already.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists {
        /// source, sink, view, ...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// DataFusion failed while planning; usually the user's SQL (unknown column, types).
    #[error("{}", clean_datafusion_message(.0))]
    DataFusion(#[from] DataFusionError),
    /// The statement is over a documented limit: its size, its depth, windows per row.
    #[error("{0}")]
    Limit(String),
    /// A broken invariant inside the planner: a bug.
    #[error("internal planner error: {0}")]
    Internal(String),
}

impl From<ParserError> for Error {
    fn from(e: ParserError) -> Self {
        let msg = match e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m,
            ParserError::RecursionLimitExceeded => format!(
                "the statement nests more than {} levels deep (parentheses, subqueries, function calls)",
                crate::limits::PARSER_RECURSION_LIMIT
            ),
        };
        Error::Syntax(msg)
    }
}

impl From<TokenizerError> for Error {
    fn from(e: TokenizerError) -> Self {
        Error::Syntax(e.to_string())
    }
}

impl Error {
    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported(what.into())
    }

    /// Shorthand for [`Error::Plan`].
    pub fn plan(what: impl Into<String>) -> Self {
        Error::Plan(what.into())
    }

    /// Whether the user's SQL caused the error (as opposed to a bug).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Error::Internal(_))
    }
}

/// DataFusion wraps planning errors in context layers; users want the innermost message.
fn clean_datafusion_message(e: &DataFusionError) -> String {
    let inner = e.find_root();
    let text = inner.to_string();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "This feature is not implemented: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}

/// Result with the planner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
