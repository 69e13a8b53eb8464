//! `CREATE SINK` in three phases, so that connecting to the sink's system never happens
//! under the session's lock: [`Session::prepare_sink`] plans against the catalog (quick,
//! under the lock), [`PreparedSink::connect`] recovers the sink's checkpoint and opens it
//! (network I/O, bounded by [`CONNECT_TIMEOUT`], without the lock), and
//! [`Session::finish_sink`] starts the pipeline and records the sink (under the lock again,
//! checking that no other client took the name meanwhile).

use std::sync::Arc;
use std::time::Duration;

use sluice_connectors::{ConnectorMetrics, RunCheckpoints, Sink, SinkConfig, SinkContext, UpdateKey};
use sluice_planner::catalog::SinkEntry;
use sluice_planner::{ObjectKind, ParsedStatement, Planner, SinkInput, Statement, StreamPlan};

use super::{Session, StatementOutput, options_of, select_all};
use crate::checkpoint::CheckpointConfig;
use crate::error::{Error, Result};
use crate::runtime::Checkpointing;

/// How long opening a sink (recovering its checkpoint, connecting to its system) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A planned sink, not yet connected.
pub struct PreparedSink {
    name: String,
    connector: String,
    plan: StreamPlan,
    config: Arc<dyn SinkConfig>,
    checkpoints: Option<CheckpointConfig>,
    definition: String,
    /// `max_state_mib`, in bytes.
    max_state: Option<u64>,
}

/// A sink recovered and opened, ready to run.
pub struct ConnectedSink {
    prepared: PreparedSink,
    recovery: Option<Checkpointing>,
    /// `None` when its bounded input was consumed and committed before a restart.
    opened: Option<(Box<dyn Sink>, Arc<ConnectorMetrics>)>,
}

impl Session {
    /// Validates and plans a `CREATE SINK` against the catalog.
    ///
    /// # Errors
    /// A name in use, bad options, a query that does not plan or does not fit the sink.
    pub async fn prepare_sink(&self, stmt: &ParsedStatement) -> Result<PreparedSink> {
        let Statement::CreateSink {
            name,
            input,
            options,
        } = &stmt.statement
        else {
            return Err(Error::Internal("prepare_sink on another statement".into()));
        };
        self.catalog.check_free(ObjectKind::Sink, name)?;
        let query = match input {
            SinkInput::Query(q) => q.clone(),
            SinkInput::Relation(r) => select_all(&r.to_string())?,
        };
        let max_state = options
            .iter()
            .find(|(k, _)| k == "max_state_mib")
            .map(|(_, v)| {
                v.trim().parse::<u64>().map(|m| m.saturating_mul(1 << 20)).map_err(|_| {
                    sluice_planner::Error::plan(format!(
                        "sink '{name}': option 'max_state_mib' must be a whole number of MiB, got '{v}'"
                    ))
                })
            })
            .transpose()?;
        let options: Vec<(String, String)> = options
            .iter()
            .filter(|(k, _)| k != "max_state_mib")
            .cloned()
            .collect();
        let (connector, options) = options_of("sink", name, &options)?;
        let config = sluice_connectors::sink_config(&connector, options)?;
        // A sink that upserts by key (postgres with primary_key) takes updating queries;
        // append-only sinks reject them when they are planned.
        let planner = Planner::new(&self.catalog);
        let plan = if config.append_only() {
            planner.plan_query(&query).await?
        } else {
            planner.plan_view_query(&query).await?
        };
        Ok(PreparedSink {
            name: name.clone(),
            connector,
            plan,
            config,
            checkpoints: self.checkpoints.clone(),
            definition: stmt.sql.clone(),
            max_state,
        })
    }

    /// Starts the pipeline of a connected sink and records the sink in the catalog.
    ///
    /// # Errors
    /// When another client created an object of that name meanwhile, or the pipeline does
    /// not start (a source it reads was dropped meanwhile).
    pub fn finish_sink(&mut self, connected: ConnectedSink) -> Result<StatementOutput> {
        let ConnectedSink {
            prepared,
            recovery,
            opened,
        } = connected;
        let name = prepared.name;
        let max_state = prepared.max_state;
        self.catalog.check_free(ObjectKind::Sink, &name)?;
        let schema = prepared.plan.schema();
        match opened {
            None => {
                self.finished_restored.insert(name.clone());
            }
            Some((sink, metrics)) => {
                self.start(&name, prepared.plan, sink, Some(metrics), recovery, max_state)?;
            }
        }
        self.catalog.sinks.insert(
            name.clone(),
            SinkEntry {
                name: name.clone(),
                connector: prepared.connector,
                schema,
                definition: prepared.definition,
            },
        );
        Ok(StatementOutput::Done(format!("created sink '{name}'")))
    }
}

/// Runs `stmt` on a session shared between clients. A `CREATE SINK` connects to its system
/// without the lock, so a server that never answers holds up only the client that named
/// it; every other statement runs under the lock, and what a query produces is read by
/// the caller after the lock is released.
///
/// # Errors
/// As [`Session::execute`].
pub async fn execute_shared(
    session: &tokio::sync::Mutex<Session>,
    stmt: &ParsedStatement,
) -> Result<StatementOutput> {
    if !matches!(stmt.statement, Statement::CreateSink { .. }) {
        return session.lock().await.execute(stmt).await;
    }
    let at = |e| Error::AtStatement {
        at: stmt.locator(),
        source: Box::new(e),
    };
    let prepared = session.lock().await.prepare_sink(stmt).await.map_err(at)?;
    let connected = prepared.connect().await.map_err(at)?;
    let mut session = session.lock().await;
    let out = session.finish_sink(connected).map_err(at)?;
    if session.record_definition(stmt) {
        session.persist().await.map_err(at)?;
    }
    Ok(out)
}

impl PreparedSink {
    /// Recovers the sink's newest checkpoint (committing what it staged) and opens it,
    /// within [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// When the sink's system cannot be reached in time, or refuses.
    pub async fn connect(self) -> Result<ConnectedSink> {
        let name = self.name.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_now()).await {
            Ok(result) => result,
            Err(_) => Err(Error::Connector(sluice_connectors::Error::Service {
                service: "sink",
                message: format!(
                    "'{name}': recovering and opening it took longer than {} s; is its server answering?",
                    CONNECT_TIMEOUT.as_secs()
                ),
            })),
        }
    }

    async fn connect_now(self) -> Result<ConnectedSink> {
        let recovery =
            super::recover(self.checkpoints.as_ref(), &self.name, Some(&self.config)).await?;
        if recovery.as_ref().is_some_and(Checkpointing::finished) {
            return Ok(ConnectedSink {
                prepared: self,
                recovery,
                opened: None,
            });
        }
        let metrics = Arc::new(ConnectorMetrics::default());
        let plan = &self.plan;
        let ctx = SinkContext {
            name: self.name.clone(),
            metrics: Arc::clone(&metrics),
            checkpoints: recovery.as_ref().map(|c| RunCheckpoints {
                restored: c.restored.as_ref().map(|r| r.manifest.id),
                next: c.next_id,
                interval: c.interval,
            }),
            update_key: plan.is_updating().then(|| {
                plan.update_key()
                    .map_or(UpdateKey::NotInOutput, UpdateKey::Columns)
            }),
        };
        let sink = self.config.open(plan.schema(), ctx).await?;
        Ok(ConnectedSink {
            prepared: self,
            recovery,
            opened: Some((sink, metrics)),
        })
    }
}
