//! Runs one statement for a request/response API (gRPC Execute, Flight SQL) and collects
//! what it produced: a message, or rows. The session's lock is held only while the
//! statement starts: a query's rows are read after it is released, so a long query never
//! holds up another client, and a client that goes away (the request future is dropped)
//! cancels its query. A continuous query over bounded sources runs to its end; over
//! unbounded sources it is refused, since it would never answer.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use sluice_engine::{Session, StatementOutput};
use sluice_planner::ParsedStatement;
use tokio::sync::Mutex;
use tonic::Status;

use super::status::status;

/// What a statement produced.
pub enum Collected {
    /// What a DDL statement did.
    Message(String),
    /// Result rows.
    Rows(SchemaRef, Vec<RecordBatch>),
}

/// Runs `stmt` and collects its rows, holding `session`'s lock only to start it.
pub async fn collect(session: &Mutex<Session>, stmt: &ParsedStatement) -> Result<Collected, Status> {
    let output = sluice_engine::execute_shared(session, stmt)
        .await
        .map_err(|e| status(&e))?;
    match output {
        StatementOutput::Done(message) => Ok(Collected::Message(message)),
        StatementOutput::Rows { schema, batches } => Ok(Collected::Rows(schema, batches)),
        StatementOutput::Query { schema, mut stream } => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| {
                    status(&sluice_engine::Error::AtStatement {
                        at: stmt.locator(),
                        source: Box::new(e.into()),
                    })
                })?;
                batches.push(batch);
            }
            Ok(Collected::Rows(schema, batches))
        }
        StatementOutput::Stream {
            schema,
            mut rows,
            pipeline,
        } => {
            let handle = session.lock().await.pipeline(&pipeline).cloned();
            let Some(handle) = handle else {
                return Err(Status::internal(format!(
                    "the pipeline '{pipeline}' of a query it just started is gone"
                )));
            };
            // Stops the query when this request is dropped (the client went away).
            let _stop = handle.stop_on_drop();
            if !handle.bounded {
                handle.stop();
                return Err(Status::failed_precondition(format!(
                    "{}: a continuous query over unbounded sources never ends; follow it with Subscribe, or query a materialized view",
                    stmt.locator()
                )));
            }
            let mut batches = Vec::new();
            while let Some(b) = rows.recv().await {
                batches.push(b);
            }
            handle.wait().await.map_err(|e| status(&e))?;
            Ok(Collected::Rows(schema, batches))
        }
    }
}
