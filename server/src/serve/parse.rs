//! Parses the SQL of a request on a blocking thread: a script of megabytes takes a while to
//! tokenize and parse, and must not hold up the async workers that answer `/health` and
//! the other clients.

use sluice_planner::ParsedStatement;
use tonic::Status;

use super::status::status;

/// The statements of `sql`.
pub async fn script(sql: String) -> Result<Vec<ParsedStatement>, Status> {
    tokio::task::spawn_blocking(move || sluice_planner::parse_script(&sql))
        .await
        .map_err(|e| Status::internal(format!("the parser's thread failed: {e}")))?
        .map_err(|e| status(&e.into()))
}

/// The one statement of `sql`.
pub async fn one(sql: String) -> Result<ParsedStatement, Status> {
    tokio::task::spawn_blocking(move || sluice_planner::parse_one(&sql))
        .await
        .map_err(|e| Status::internal(format!("the parser's thread failed: {e}")))?
        .map_err(|e| status(&e.into()))
}
