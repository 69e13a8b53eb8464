//! Maps engine errors to gRPC status codes: the user's mistakes are InvalidArgument,
//! NotFound, AlreadyExists or FailedPrecondition; a query past its memory is
//! ResourceExhausted; an outage is Unavailable; a bug is Internal. Messages are cut to
//! [`MAX_MESSAGE_BYTES`], so that an error quoting a huge statement still fits in the
//! response's metadata.

use datafusion::error::DataFusionError;
use sluice_engine::{Error, ErrorKind};
use tonic::Status;

/// The longest error message sent, in bytes (gRPC carries it in a header).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The status for an engine error; the message keeps the statement and position.
pub fn status(e: &Error) -> Status {
    let message = cut(e.to_string());
    match root(e) {
        Error::Plan(sluice_planner::Error::NotFound { .. }) => Status::not_found(message),
        Error::Plan(sluice_planner::Error::AlreadyExists { .. }) => Status::already_exists(message),
        Error::DataFusion(d) if matches!(d.find_root(), DataFusionError::ResourcesExhausted(_)) => {
            Status::resource_exhausted(message)
        }
        _ => match e.kind() {
            ErrorKind::User => Status::invalid_argument(message),
            ErrorKind::External => Status::unavailable(message),
            ErrorKind::Internal => Status::internal(message),
        },
    }
}

/// `message`, cut at a character boundary to at most [`MAX_MESSAGE_BYTES`].
fn cut(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - 40;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &message[..end], message.len())
}

fn root(e: &Error) -> &Error {
    match e {
        Error::AtStatement { source, .. } | Error::Pipeline { source, .. } => root(source),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_message_is_cut_to_fit_a_header() {
        let e = Error::Plan(sluice_planner::Error::Plan("x".repeat(1 << 20)));
        let s = status(&e);
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().len() <= MAX_MESSAGE_BYTES, "{}", s.message().len());
        assert!(s.message().ends_with("(1048576 bytes in all)"));
    }

    #[test]
    fn division_by_zero_is_the_users_and_memory_is_resource_exhausted() {
        let e = Error::DataFusion(DataFusionError::ArrowError(
            Box::new(datafusion::arrow::error::ArrowError::DivideByZero),
            None,
        ));
        assert_eq!(status(&e).code(), tonic::Code::InvalidArgument);
        let e = Error::DataFusion(DataFusionError::ResourcesExhausted("too big".into()));
        assert_eq!(status(&e).code(), tonic::Code::ResourceExhausted);
    }
}
