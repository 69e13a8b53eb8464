//! The checkpoint coordinator of one pipeline. Every interval it asks the source tasks for
//! a barrier; the sources, the chain tasks (once a barrier has arrived on all their inputs)
//! and the sink task acknowledge it with their positions, state and staged output. When
//! every acknowledgement of a checkpoint is in, the coordinator writes the state files and
//! the manifest, and only then commits the sink's staged output (two-phase commit). It runs
//! in its own task, so the pipeline keeps flowing while a checkpoint is written.
//!
//! When every source has ended or stopped, the coordinator asks for a last checkpoint; the
//! pipeline ends after it is committed.
//!
//! For the crash test, `SLUICE_TEST_ABORT_BEFORE_COMMIT=<id>` aborts the process right
//! after checkpoint `<id>`'s manifest is written and before its sink commit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use sluice_connectors::{Committed, Precommit, SinkConfig};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::checkpoint::manifest::{MANIFEST_VERSION, Manifest, SourceEntry, StateOwner};
use crate::checkpoint::{CheckpointMetrics, CheckpointStore, now_unix_ms};
use crate::error::Result;
use crate::message::Barrier;

/// What a task tells the coordinator.
#[derive(Debug)]
pub(crate) enum Ack {
    /// A source task sent barrier `id` downstream from this position.
    Source {
        id: u64,
        task: usize,
        position: Option<serde_json::Value>,
        watermark: i64,
    },
    /// A chain task aligned barrier `id`; its operators' state, in chain order.
    Chain {
        id: u64,
        task: usize,
        states: Vec<Option<RecordBatch>>,
    },
    /// The sink staged everything before barrier `id`.
    Sink { id: u64, precommit: Precommit },
    /// A source task's input ended (or it was stopped): it waits for the last checkpoint.
    SourceDone { stopped: bool },
}

/// A checkpoint whose acknowledgements are coming in.
struct InFlight {
    started: Instant,
    last: bool,
    sources: Vec<SourceEntry>,
    chains: Vec<(usize, Vec<Option<RecordBatch>>)>,
    sink: Option<Precommit>,
}

/// The coordinator of one pipeline's checkpoints.
pub(crate) struct Coordinator {
    pub name: String,
    pub plan: String,
    pub store: CheckpointStore,
    pub interval: Duration,
    pub retention: usize,
    pub sink: Option<Arc<dyn SinkConfig>>,
    pub source_tasks: usize,
    pub chain_tasks: usize,
    pub trigger: watch::Sender<Barrier>,
    /// The newest complete checkpoint, for sources that acknowledge their input.
    pub completed: watch::Sender<u64>,
    pub acks: mpsc::UnboundedReceiver<Ack>,
    pub next_id: u64,
    pub metrics: Arc<CheckpointMetrics>,
    /// Staged sink output of checkpoints that failed to be written, carried into the next.
    pub carried: Vec<serde_json::Value>,
    /// Checkpoints that failed in a row; the pipeline fails at [`MAX_FAILURES_IN_A_ROW`].
    pub failures_in_a_row: u32,
}

/// Checkpoints that may fail one after another before the pipeline fails: output waits
/// for a checkpoint, so a store that stays down must not go unnoticed.
const MAX_FAILURES_IN_A_ROW: u32 = 5;

impl Coordinator {
    /// Runs until the last checkpoint is committed or every task has ended.
    ///
    /// # Errors
    /// When the last checkpoint cannot be written, or a sink commit fails.
    pub(crate) async fn run(mut self) -> Result<()> {
        // A zero period would panic in tokio; the CLI turns checkpoints off for it anyway.
        let period = self.interval.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut in_flight: BTreeMap<u64, InFlight> = BTreeMap::new();
        let mut done_sources = 0usize;
        let mut stopped = false;
        let mut last_sent = false;
        let abort_before = std::env::var("SLUICE_TEST_ABORT_BEFORE_COMMIT")
            .ok()
            .and_then(|v| v.parse::<u64>().ok());
        loop {
            tokio::select! {
                _ = tick.tick(), if !last_sent => {
                    // One checkpoint at a time: a slow one delays the next instead of piling up.
                    if in_flight.is_empty() {
                        self.inject(&mut in_flight, false);
                    }
                }
                ack = self.acks.recv() => {
                    let Some(ack) = ack else {
                        // Every task ended without a last checkpoint: the pipeline failed.
                        return Ok(());
                    };
                    match ack {
                        Ack::SourceDone { stopped: s } => {
                            done_sources += 1;
                            stopped |= s;
                            if done_sources >= self.source_tasks && !last_sent {
                                last_sent = true;
                                self.inject(&mut in_flight, true);
                            }
                        }
                        Ack::Source { id, task, position, watermark } => {
                            if let Some(c) = in_flight.get_mut(&id) {
                                c.sources.push(SourceEntry { task, position, watermark });
                            }
                        }
                        Ack::Chain { id, task, states } => {
                            if let Some(c) = in_flight.get_mut(&id) {
                                c.chains.push((task, states));
                            }
                        }
                        Ack::Sink { id, precommit } => {
                            if let Some(c) = in_flight.get_mut(&id) {
                                c.sink = Some(precommit);
                            }
                        }
                    }
                    while let Some(entry) = in_flight.first_entry() {
                        let c = entry.get();
                        let complete = c.sources.len() >= self.source_tasks
                            && c.chains.len() >= self.chain_tasks
                            && c.sink.is_some();
                        if !complete {
                            break;
                        }
                        let id = *entry.key();
                        let c = entry.remove();
                        let last = c.last;
                        self.complete(id, c, stopped, abort_before).await?;
                        if last {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    fn inject(&mut self, in_flight: &mut BTreeMap<u64, InFlight>, last: bool) {
        let id = self.next_id;
        self.next_id += 1;
        in_flight.insert(
            id,
            InFlight {
                started: Instant::now(),
                last,
                sources: Vec::new(),
                chains: Vec::new(),
                sink: None,
            },
        );
        self.trigger.send_replace(Barrier { id, last });
    }

    /// Writes a checkpoint whose acknowledgements are all in, then commits the sink.
    async fn complete(
        &mut self,
        id: u64,
        mut c: InFlight,
        stopped: bool,
        abort_before: Option<u64>,
    ) -> Result<()> {
        let precommit = c.sink.take().unwrap_or_default();
        let pinned = precommit.pinned;
        c.sources.sort_by_key(|s| s.task);
        let mut states = Vec::new();
        for (task, ops) in c.chains {
            for (op, state) in ops.into_iter().enumerate() {
                if let Some(batch) = state {
                    states.push((StateOwner::Operator { task, op }, vec![batch]));
                }
            }
        }
        states.push((StateOwner::Sink, precommit.state));
        let mut pending = std::mem::take(&mut self.carried);
        pending.extend(precommit.pending);
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            id,
            pipeline: self.name.clone(),
            plan: self.plan.clone(),
            completed_unix_ms: now_unix_ms(),
            duration_ms: 0,
            last: c.last,
            stopped: c.last && stopped,
            sources: c.sources,
            files: Vec::new(),
            sink_pending: pending.clone(),
            checksum: 0,
        };
        let mut manifest = manifest;
        manifest.duration_ms = u64::try_from(c.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let written = match self.store.write(manifest, states).await {
            Ok(m) => m,
            Err(e) if !c.last && !pinned && self.failures_in_a_row + 1 < MAX_FAILURES_IN_A_ROW => {
                // The pipeline goes on; the staged output waits for the next checkpoint,
                // which covers it together with its own. (Output pinned to its checkpoint
                // fails the pipeline instead, which resumes from the last complete one.)
                self.failures_in_a_row += 1;
                self.metrics.failed.fetch_add(1, Ordering::Relaxed);
                self.carried = pending;
                tracing::warn!(pipeline = %self.name, checkpoint = id, error = %e, "checkpoint failed; the next one covers its output");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if abort_before == Some(id) {
            tracing::error!(checkpoint = id, "SLUICE_TEST_ABORT_BEFORE_COMMIT: aborting");
            std::process::abort();
        }
        if let Some(sink) = &self.sink {
            for p in &written.sink_pending {
                if sink.commit(id, p).await? == Committed::Lost {
                    return Err(crate::Error::Internal(format!(
                        "the sink output staged for checkpoint {id} was lost before its commit; the pipeline must resume from an earlier checkpoint"
                    )));
                }
            }
        }
        self.failures_in_a_row = 0;
        self.completed.send_replace(id);
        let m = &self.metrics;
        m.completed.fetch_add(1, Ordering::Relaxed);
        m.last_id.store(id, Ordering::Relaxed);
        m.last_duration_ms
            .store(written.duration_ms, Ordering::Relaxed);
        m.last_bytes.store(written.state_bytes(), Ordering::Relaxed);
        m.last_completed_unix_ms
            .store(written.completed_unix_ms, Ordering::Relaxed);
        tracing::debug!(
            pipeline = %self.name,
            checkpoint = id,
            duration_ms = written.duration_ms,
            bytes = written.state_bytes(),
            last = written.last,
            "checkpoint complete"
        );
        if let Err(e) = self.store.retain(self.retention, id).await {
            tracing::warn!(pipeline = %self.name, error = %e, "cannot delete old checkpoints");
        }
        Ok(())
    }
}
