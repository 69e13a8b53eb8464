//! Maps engine errors to gRPC status codes: the user's mistakes are InvalidArgument,
//! NotFound or AlreadyExists; an outage is Unavailable; a bug is Internal.

use sluice_engine::{Error, ErrorKind};
use tonic::Status;

/// The status for an engine error; the message keeps the statement and position.
pub fn status(e: &Error) -> Status {
    let message = e.to_string();
    match root(e) {
        Error::Plan(sluice_planner::Error::NotFound { .. }) => Status::not_found(message),
        Error::Plan(sluice_planner::Error::AlreadyExists { .. }) => Status::already_exists(message),
        _ => match e.kind() {
            ErrorKind::User => Status::invalid_argument(message),
            ErrorKind::External => Status::unavailable(message),
            ErrorKind::Internal => Status::internal(message),
        },
    }
}

fn root(e: &Error) -> &Error {
    match e {
        Error::AtStatement { source, .. } | Error::Pipeline { source, .. } => root(source),
        other => other,
    }
}
