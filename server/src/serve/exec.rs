//! Runs one statement for a request/response API (gRPC Execute, Flight SQL) and collects
//! what it produced: a message, or rows. A continuous query over bounded sources runs to its
//! end; over unbounded sources it is refused, since it would never answer.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_engine::{Session, StatementOutput};
use sluice_planner::ParsedStatement;
use tonic::Status;

use super::status::status;

/// What a statement produced.
pub enum Collected {
    /// What a DDL statement did.
    Message(String),
    /// Result rows.
    Rows(SchemaRef, Vec<RecordBatch>),
}

pub async fn collect(session: &mut Session, stmt: &ParsedStatement) -> Result<Collected, Status> {
    match session.execute(stmt).await.map_err(|e| status(&e))? {
        StatementOutput::Done(message) => Ok(Collected::Message(message)),
        StatementOutput::Rows { schema, batches } => Ok(Collected::Rows(schema, batches)),
        StatementOutput::Stream {
            schema,
            mut rows,
            pipeline,
        } => {
            let bounded = session.pipeline(&pipeline).is_some_and(|p| p.bounded);
            if !bounded {
                if let Some(p) = session.pipeline(&pipeline) {
                    p.stop();
                }
                return Err(Status::failed_precondition(format!(
                    "{}: a continuous query over unbounded sources never ends; follow it with Subscribe, or query a materialized view",
                    stmt.locator()
                )));
            }
            let mut batches = Vec::new();
            while let Some(b) = rows.recv().await {
                batches.push(b);
            }
            if let Some(p) = session.pipeline(&pipeline) {
                p.wait().await.map_err(|e| status(&e))?;
            }
            Ok(Collected::Rows(schema, batches))
        }
    }
}
