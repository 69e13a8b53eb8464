//! The `sluice.v1.SluiceService` gRPC service: decodes requests, calls the engine session,
//! encodes results. No logic of its own.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::Stream;
use sluice_engine::{Pipeline, PipelineStatus, Session, StatementOutput};
use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_server::SluiceService;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::status::status;
use super::{exec, ipc, parse};

/// The service over one shared session.
#[derive(Clone)]
pub struct Service {
    session: Arc<Mutex<Session>>,
}

impl Service {
    pub fn new(session: Arc<Mutex<Session>>) -> Self {
        Self { session }
    }
}

fn pipeline_info(p: &Pipeline) -> pb::Pipeline {
    let m = p.metrics.snapshot();
    let (status, error) = match p.status() {
        PipelineStatus::Running => (pb::PipelineStatus::Running, String::new()),
        PipelineStatus::Finished => (pb::PipelineStatus::Finished, String::new()),
        PipelineStatus::Stopped => (pb::PipelineStatus::Stopped, String::new()),
        PipelineStatus::Failed(e) => (pb::PipelineStatus::Failed, e),
    };
    pb::Pipeline {
        name: p.name.clone(),
        status: status as i32,
        error,
        plan: p.plan.to_string(),
        rows_in: m.rows_in,
        rows_out: m.rows_out,
        late_rows_dropped: m.late_rows_dropped,
        bad_records: m.bad_records,
        connector_errors: m.connector_errors,
        state_bytes: m.state_bytes,
        bytes_in: m.bytes_in,
        source_lag: m.source_lag,
        watermark_ms: (m.watermark != i64::MIN).then_some({
            if m.watermark == i64::MAX {
                i64::MAX
            } else {
                m.watermark / 1_000_000
            }
        }),
        checkpoints: p.checkpoints.as_ref().map(|c| {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            pb::CheckpointStats {
                completed: load(&c.completed),
                failed: load(&c.failed),
                last_id: load(&c.last_id),
                last_duration_ms: load(&c.last_duration_ms),
                last_bytes: load(&c.last_bytes),
                last_age_ms: c.age_ms(),
                restored_from: load(&c.restored_id),
                restore_ms: load(&c.restore_ms),
            }
        }),
    }
}

fn find<'a>(session: &'a Session, name: &str) -> Result<&'a Pipeline, Status> {
    session
        .pipeline(name)
        .ok_or_else(|| Status::not_found(format!("pipeline '{name}' does not exist")))
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SluiceService for Service {
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let sql = request.into_inner().sql;
        let statements = parse::script(sql).await?;
        let mut results = Vec::with_capacity(statements.len());
        for stmt in &statements {
            results.push(match exec::collect(&self.session, stmt).await? {
                exec::Collected::Message(message) => pb::StatementResult {
                    message,
                    ..Default::default()
                },
                exec::Collected::Rows(schema, batches) => pb::StatementResult {
                    message: String::new(),
                    row_count: batches.iter().map(|b| b.num_rows() as u64).sum(),
                    arrow_ipc: ipc::encode(&schema, &batches).map_err(internal)?,
                },
            });
        }
        Ok(Response::new(pb::ExecuteResponse { results }))
    }

    async fn list_pipelines(
        &self,
        _request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let session = self.session.lock().await;
        let pipelines = session.pipelines().iter().map(pipeline_info).collect();
        Ok(Response::new(pb::ListPipelinesResponse { pipelines }))
    }

    async fn describe_pipeline(
        &self,
        request: Request<pb::PipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let name = request.into_inner().name;
        let session = self.session.lock().await;
        let p = find(&session, &name)?;
        Ok(Response::new(pipeline_info(p)))
    }

    async fn stop_pipeline(
        &self,
        request: Request<pb::PipelineRequest>,
    ) -> Result<Response<pb::Pipeline>, Status> {
        let name = request.into_inner().name;
        // A handle on the pipeline: its last checkpoint is waited for without the lock.
        let p = find(&*self.session.lock().await, &name)?.clone();
        if p.status() != PipelineStatus::Running {
            return Err(Status::failed_precondition(format!(
                "pipeline '{name}' is not running"
            )));
        }
        p.stop();
        p.wait().await.map_err(|e| status(&e))?;
        Ok(Response::new(pipeline_info(&p)))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<SubscribeStream>, Status> {
        let target = request
            .into_inner()
            .target
            .ok_or_else(|| Status::invalid_argument("Subscribe needs a name or a query"))?;
        match target {
            pb::subscribe_request::Target::Name(name) => {
                let session = self.session.lock().await;
                let p = session.pipeline(&name).ok_or_else(|| {
                    Status::not_found(format!("no sink or materialized view named '{name}'"))
                })?;
                let schema = p.plan.schema();
                let rx = p.subscribe();
                let stream = futures::stream::unfold((rx, schema), |(mut rx, schema)| async move {
                    match rx.recv().await {
                        Ok((emitted, batch)) => {
                            let item = ipc::encode(&schema, std::slice::from_ref(&batch))
                                .map(|arrow_ipc| pb::SubscribeResponse {
                                    arrow_ipc,
                                    row_count: batch.num_rows() as u64,
                                    emitted_at_unix_nanos: unix_nanos(emitted),
                                })
                                .map_err(internal);
                            Some((item, (rx, schema)))
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let e = Status::data_loss(format!(
                                "the subscriber fell behind and missed {n} batches"
                            ));
                            Some((Err(e), (rx, schema)))
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                    }
                });
                Ok(Response::new(Box::pin(stream)))
            }
            pb::subscribe_request::Target::Query(sql) => {
                let stmt = parse::one(sql).await?;
                if !matches!(stmt.statement, sluice_planner::Statement::Query(_)) {
                    return Err(Status::invalid_argument(
                        "Subscribe takes a SELECT query; run other statements with Execute",
                    ));
                }
                let mut session = self.session.lock().await;
                let output = session.execute(&stmt).await.map_err(|e| status(&e))?;
                let mut guard = None;
                let (schema, rows) = match output {
                    StatementOutput::Stream {
                        schema,
                        rows,
                        pipeline,
                    } => {
                        // The query runs for this subscriber only: stop it when they leave.
                        guard = session.pipeline(&pipeline).map(|p| p.stop_on_drop());
                        (schema, rows)
                    }
                    StatementOutput::Query { schema, stream } => {
                        drop(session);
                        let batches = sluice_engine::session::query::collect(stream)
                            .await
                            .map_err(|e| status(&e))?;
                        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
                        for b in batches {
                            let _ = tx.try_send(b);
                        }
                        (schema, rx)
                    }
                    StatementOutput::Rows { schema, batches } => {
                        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
                        for b in batches {
                            let _ = tx.try_send(b);
                        }
                        (schema, rx)
                    }
                    StatementOutput::Done(_) => {
                        return Err(Status::invalid_argument("Subscribe takes a query"));
                    }
                };
                let stream = futures::stream::unfold(
                    (rows, schema, guard),
                    |(mut rows, schema, guard)| async move {
                        let batch = rows.recv().await?;
                        let item = ipc::encode(&schema, std::slice::from_ref(&batch))
                            .map(|arrow_ipc| pb::SubscribeResponse {
                                arrow_ipc,
                                row_count: batch.num_rows() as u64,
                                emitted_at_unix_nanos: unix_nanos(std::time::SystemTime::now()),
                            })
                            .map_err(internal);
                        Some((item, (rows, schema, guard)))
                    },
                );
                Ok(Response::new(Box::pin(stream)))
            }
        }
    }
}

fn unix_nanos(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
