//! A running pipeline: the tasks of one continuous query, from its sources to its sink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sluice_connectors::{BadRecords, ConnectorMetrics, Sink, SourceContext, SourceDecl};
use sluice_planner::WatermarkSpec;
use sluice_planner::plan::{StreamOp, StreamPlan};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::runtime::state_budget::StateBudget;
use crate::checkpoint::coordinator::{Ack, Coordinator};
use crate::checkpoint::{CheckpointMetrics, CheckpointStore, Restored};
use crate::error::{Error, Result};
use crate::message::{Barrier, Message};
use crate::metrics::PipelineMetrics;
use crate::operator::Operator;
use crate::operators::filter::FilterOperator;
use crate::operators::project::ProjectOperator;
use crate::operators::session_window::SessionWindowOperator;
use crate::operators::union::UnionOperator;
use crate::operators::window_aggregate::WindowAggregateOperator;
use crate::runtime::CHANNEL_CAPACITY;
use crate::runtime::chain::{ChainCheckpoints, run_chain};
use crate::runtime::sink_task::run_sink;
use crate::runtime::source_task::{SourceCheckpoints, SourceTask};

/// What a plan's source node reads.
#[derive(Debug, Clone)]
pub struct SourceBinding {
    /// The validated connector declaration.
    pub decl: SourceDecl,
    /// The source's event time, if declared.
    pub watermark: Option<WatermarkSpec>,
}

/// Where a pipeline's results go.
pub struct SinkTarget {
    /// The running sink.
    pub sink: Box<dyn Sink>,
    /// Its connector's counters, reported with the pipeline's (none for engine-owned sinks).
    pub metrics: Option<Arc<ConnectorMetrics>>,
}

/// How a pipeline checkpoints, and what it resumes from.
#[derive(Debug)]
pub struct Checkpointing {
    /// Where its checkpoints go.
    pub store: CheckpointStore,
    /// Time between checkpoints.
    pub interval: std::time::Duration,
    /// Complete checkpoints kept.
    pub retention: usize,
    /// The sink's config, to commit staged output (none for engine-owned sinks).
    pub sink: Option<Arc<dyn sluice_connectors::SinkConfig>>,
    /// The checkpoint to resume from.
    pub restored: Option<Restored>,
    /// The number the next checkpoint gets (above every folder in the store).
    pub next_id: u64,
    /// Counters, shared with whoever reports them.
    pub metrics: Arc<CheckpointMetrics>,
}

impl Checkpointing {
    /// Whether the checkpoint it resumes from is the last of a pipeline whose input ended:
    /// there is nothing left to run.
    pub fn finished(&self) -> bool {
        self.restored
            .as_ref()
            .is_some_and(|r| r.manifest.last && !r.manifest.stopped)
    }
}

/// A fingerprint of a plan, to tell whether saved state belongs to it.
pub fn plan_fingerprint(plan: &StreamPlan) -> String {
    format!(
        "{:016x}",
        twox_hash::XxHash64::oneshot(0, plan.to_string().as_bytes())
    )
}

/// A pipeline's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineStatus {
    /// Reading and writing.
    Running,
    /// Its bounded input ended and the sink committed.
    Finished,
    /// Stopped on request; the sink committed what it had.
    Stopped,
    /// Stopped by an error.
    Failed(String),
}

/// Stops its pipeline when dropped.
#[derive(Debug)]
pub struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// A running continuous query. A clone is a handle on the same running pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Its name: the sink or view it feeds.
    pub name: String,
    /// The plan it runs.
    pub plan: StreamPlan,
    /// Live counters.
    pub metrics: Arc<PipelineMetrics>,
    /// Whether all its sources are bounded.
    pub bounded: bool,
    /// Checkpoint counters, when it checkpoints.
    pub checkpoints: Option<Arc<CheckpointMetrics>>,
    status: Arc<Mutex<PipelineStatus>>,
    error: Arc<Mutex<Option<Error>>>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    tap: broadcast::Sender<(
        std::time::SystemTime,
        datafusion::arrow::record_batch::RecordBatch,
    )>,
}

/// Result batches a slow subscriber may fall behind by before it misses some.
const TAP_CAPACITY: usize = 256;

struct Chain {
    ops: Vec<Box<dyn Operator>>,
    /// The chain (or source) feeding each input, in input order.
    inputs: Vec<usize>,
}

enum Task {
    Source(usize),
    Chain(Chain),
}

impl Pipeline {
    /// Builds every operator of `plan` (validating it) and starts the tasks.
    ///
    /// # Errors
    /// When a source is unknown or an operator rejects its configuration.
    pub fn start(
        name: &str,
        plan: StreamPlan,
        sources: &HashMap<String, SourceBinding>,
        target: SinkTarget,
        checkpointing: Option<Checkpointing>,
        max_state_bytes: Option<u64>,
    ) -> Result<Self> {
        let metrics = Arc::new(PipelineMetrics::default());
        if let Ok(mut sink) = metrics.sink.lock() {
            sink.clone_from(&target.metrics);
        }
        let fingerprint = plan_fingerprint(&plan);
        let restored = checkpointing.as_ref().and_then(|c| c.restored.as_ref());
        if let Some(r) = restored
            && r.manifest.plan != fingerprint
        {
            return Err(Error::IncompatibleState(format!(
                "the query of pipeline '{name}' changed since checkpoint {} was taken in '{}'; \
                 delete that folder to start the pipeline over",
                r.manifest.id,
                checkpointing
                    .as_ref()
                    .map(|c| c.store.root().to_string())
                    .unwrap_or_default()
            )));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Group nodes into tasks: a node with one input whose producer feeds only it joins
        // the producer's chain; sources, unions and fan-outs start new tasks.
        let mut consumers = vec![0usize; plan.nodes.len()];
        for node in &plan.nodes {
            for e in &node.inputs {
                consumers[e.from] += 1;
            }
        }
        let mut tasks: Vec<Task> = Vec::new();
        let mut task_of_node = vec![usize::MAX; plan.nodes.len()];
        for node in &plan.nodes {
            let input_schema = node
                .inputs
                .first()
                .and_then(|e| plan.nodes.get(e.from))
                .map(|n| Arc::clone(&n.schema));
            let op: Option<Box<dyn Operator>> = match &node.op {
                StreamOp::Source { .. } => None,
                StreamOp::Filter { predicate } => Some(Box::new(FilterOperator::try_new(
                    Arc::clone(predicate),
                    &need(input_schema)?,
                )?)),
                StreamOp::Project { exprs } => Some(Box::new(ProjectOperator::try_new(
                    exprs.clone(),
                    &need(input_schema)?,
                    Arc::clone(&node.schema),
                )?)),
                StreamOp::WindowAggregate(spec) => {
                    let late = Arc::clone(&metrics.late_rows_dropped);
                    let input = need(input_schema)?;
                    if matches!(
                        spec.kind,
                        sluice_planner::window::WindowKind::Session { .. }
                    ) {
                        Some(Box::new(SessionWindowOperator::try_new(
                            spec.clone(),
                            &input,
                            Arc::clone(&node.schema),
                            late,
                        )?))
                    } else {
                        Some(Box::new(
                            WindowAggregateOperator::try_new(
                                spec.clone(),
                                &input,
                                Arc::clone(&node.schema),
                                late,
                            )?
                            .with_bad_rows(Arc::clone(&metrics.bad_rows)),
                        ))
                    }
                }
                StreamOp::Union => Some(Box::new(UnionOperator::new(Arc::clone(&node.schema)))),
                StreamOp::UpdatingAggregate(spec) => Some(Box::new(
                    crate::operators::updating_aggregate::UpdatingAggregateOperator::try_new(
                        spec.clone(),
                        &need(input_schema)?,
                        Arc::clone(&node.schema),
                    )?,
                )),
            };
            let Some(op) = op else {
                task_of_node[node.id] = tasks.len();
                tasks.push(Task::Source(node.id));
                continue;
            };
            let single = node.inputs.len() == 1 && !matches!(node.op, StreamOp::Union);
            let joinable = single
                && node.inputs.first().is_some_and(|e| {
                    consumers[e.from] == 1
                        && matches!(tasks.get(task_of_node[e.from]), Some(Task::Chain(_)))
                });
            if joinable {
                let t = task_of_node[node.inputs[0].from];
                if let Some(Task::Chain(chain)) = tasks.get_mut(t) {
                    chain.ops.push(op);
                }
                task_of_node[node.id] = t;
            } else {
                let inputs = node.inputs.iter().map(|e| task_of_node[e.from]).collect();
                task_of_node[node.id] = tasks.len();
                tasks.push(Task::Chain(Chain {
                    ops: vec![op],
                    inputs,
                }));
            }
        }
        if let Some(r) = restored {
            for (t, task) in tasks.iter_mut().enumerate() {
                if let Task::Chain(chain) = task {
                    for (k, op) in chain.ops.iter_mut().enumerate() {
                        if let Some(state) = r.operators.get(&(t, k)) {
                            op.restore(state.clone())?;
                        }
                    }
                }
            }
        }
        let source_tasks = tasks
            .iter()
            .filter(|t| matches!(t, Task::Source(_)))
            .count();
        let chain_tasks = tasks.len() - source_tasks;
        let (trigger_tx, trigger_rx) = watch::channel(Barrier { id: 0, last: false });
        let (completed_tx, completed_rx) = watch::channel(0u64);
        let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Ack>();
        let last_sent = checkpointing
            .as_ref()
            .map_or(0, |c| c.next_id.saturating_sub(1));
        // Wire channels: one per (producer task, consumer task input).
        let mut senders: Vec<Vec<mpsc::Sender<Message>>> =
            (0..tasks.len()).map(|_| Vec::new()).collect();
        let mut receivers: Vec<Vec<mpsc::Receiver<Message>>> =
            (0..tasks.len()).map(|_| Vec::new()).collect();
        for (t, task) in tasks.iter().enumerate() {
            if let Task::Chain(chain) = task {
                for &producer in &chain.inputs {
                    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                    senders[producer].push(tx);
                    receivers[t].push(rx);
                }
            }
        }
        let root_task = task_of_node
            .get(plan.root)
            .copied()
            .ok_or_else(|| Error::Internal("plan root missing".into()))?;
        let (sink_tx, sink_rx) = mpsc::channel(CHANNEL_CAPACITY);
        senders[root_task].push(sink_tx);

        // The idle timeout of each source task, for the chains that align several inputs.
        let idle_timeouts: Vec<Option<std::time::Duration>> = tasks
            .iter()
            .map(|task| match task {
                Task::Source(node) => match plan.nodes.get(*node).map(|n| &n.op) {
                    Some(StreamOp::Source { name, .. }) => {
                        sources.get(name).and_then(|b| b.decl.idle_timeout)
                    }
                    _ => None,
                },
                Task::Chain(_) => None,
            })
            .collect();
        let mut set = JoinSet::new();
        let mut bounded = true;
        for (t, task) in tasks.into_iter().enumerate() {
            let outputs = std::mem::take(&mut senders[t]);
            match task {
                Task::Source(node_id) => {
                    let Some(StreamOp::Source {
                        name: source,
                        projection,
                    }) = plan.nodes.get(node_id).map(|n| &n.op)
                    else {
                        return Err(Error::Internal("source task without a source node".into()));
                    };
                    let binding = sources.get(source).ok_or_else(|| {
                        Error::Internal(format!("source '{source}' is not bound"))
                    })?;
                    bounded &= binding.decl.config.is_bounded();
                    let saved =
                        restored.and_then(|r| r.manifest.sources.iter().find(|s| s.task == t));
                    let connector_metrics = Arc::new(ConnectorMetrics::default());
                    if let Ok(mut m) = metrics.sources.lock() {
                        m.push(Arc::clone(&connector_metrics));
                    }
                    let readings = plan
                        .nodes
                        .iter()
                        .filter(
                            |n| matches!(&n.op, StreamOp::Source { name, .. } if name == source),
                        )
                        .count();
                    let ctx = SourceContext {
                        name: source.clone(),
                        reader: reader_id(name, source, (readings > 1).then_some(t)),
                        batch_size: binding.decl.batch_size,
                        linger: binding.decl.linger,
                        metrics: Arc::clone(&connector_metrics),
                        bad_records: Arc::new(BadRecords::new(
                            binding.decl.on_error.clone(),
                            connector_metrics,
                        )),
                        resume: saved.and_then(|s| s.position.clone()),
                        checkpointing: checkpointing.is_some(),
                    };
                    let task = SourceTask {
                        decl: binding.decl.clone(),
                        watermark: binding.watermark.clone(),
                        projection: projection.clone(),
                        ctx,
                        outputs,
                        stop: stop_rx.clone(),
                        metrics: Arc::clone(&metrics),
                        checkpoints: checkpointing.as_ref().map(|_| SourceCheckpoints {
                            task: t,
                            trigger: trigger_rx.clone(),
                            completed: completed_rx.clone(),
                            acks: ack_tx.clone(),
                            last_sent,
                            watermark: saved.map_or(crate::message::WATERMARK_MIN, |s| s.watermark),
                        }),
                    };
                    set.spawn(task.run());
                }
                Task::Chain(chain) => {
                    let inputs = std::mem::take(&mut receivers[t]);
                    let idle = chain
                        .inputs
                        .iter()
                        .map(|&t| idle_timeouts.get(t).copied().flatten())
                        .collect();
                    let checkpoints = checkpointing.as_ref().map(|_| ChainCheckpoints {
                        task: t,
                        acks: ack_tx.clone(),
                    });
                    let budget = StateBudget::new(Arc::clone(&metrics.state_bytes), max_state_bytes);
                    set.spawn(run_chain(
                        chain.ops,
                        inputs,
                        idle,
                        outputs,
                        checkpoints,
                        Some(budget),
                    ));
                }
            }
        }
        let (tap, _) = broadcast::channel(TAP_CAPACITY);
        set.spawn(run_sink(
            target.sink,
            sink_rx,
            Arc::clone(&metrics),
            tap.clone(),
            checkpointing.as_ref().map(|_| ack_tx.clone()),
        ));
        drop(ack_tx);
        let checkpoint_metrics = checkpointing.as_ref().map(|c| Arc::clone(&c.metrics));
        if let Some(c) = checkpointing {
            let coordinator = Coordinator {
                name: name.to_string(),
                plan: fingerprint,
                store: c.store,
                interval: c.interval,
                retention: c.retention,
                sink: c.sink,
                source_tasks,
                chain_tasks,
                trigger: trigger_tx,
                completed: completed_tx,
                acks: ack_rx,
                next_id: c.next_id,
                metrics: c.metrics,
                carried: Vec::new(),
                failures_in_a_row: 0,
            };
            set.spawn(coordinator.run());
        }

        let status = Arc::new(Mutex::new(PipelineStatus::Running));
        let (done_tx, done_rx) = watch::channel(false);
        let driver_status = Arc::clone(&status);
        let error = Arc::new(Mutex::new(None));
        let driver_error = Arc::clone(&error);
        let driver_stop = stop_tx.clone();
        let pipeline_name = name.to_string();
        tokio::spawn(async move {
            let mut failure: Option<String> = None;
            // A task whose downstream ended reports that first, often before the
            // downstream's own error: it is the pipeline's error only if no other comes.
            let mut downstream_closed = None;
            while let Some(joined) = set.join_next().await {
                let err = match joined {
                    Ok(Ok(())) => None,
                    Ok(Err(Error::DownstreamClosed)) => {
                        downstream_closed.get_or_insert(Error::DownstreamClosed);
                        None
                    }
                    Ok(Err(e)) => Some(e),
                    Err(e) if e.is_cancelled() => None,
                    Err(e) => Some(Error::Internal(format!("a task panicked: {e}"))),
                };
                let err = err.or_else(|| {
                    if set.is_empty() && failure.is_none() {
                        downstream_closed.take()
                    } else {
                        None
                    }
                });
                if let Some(e) = err
                    && failure.is_none()
                {
                    tracing::error!(pipeline = %pipeline_name, error = %e, "pipeline failed");
                    failure = Some(e.to_string());
                    if let Ok(mut slot) = driver_error.lock() {
                        *slot = Some(e);
                    }
                    let _ = driver_stop.send(true);
                    set.abort_all();
                }
            }
            if let Ok(mut s) = driver_status.lock() {
                *s = match failure {
                    Some(e) => PipelineStatus::Failed(e),
                    None if *driver_stop.borrow() => PipelineStatus::Stopped,
                    None => PipelineStatus::Finished,
                };
            }
            let _ = done_tx.send(true);
        });
        Ok(Self {
            name: name.to_string(),
            plan,
            metrics,
            bounded,
            checkpoints: checkpoint_metrics,
            status,
            error,
            stop: stop_tx,
            done: done_rx,
            tap,
        })
    }

    /// The result batches written from now on. A subscriber that falls more than a few
    /// hundred batches behind misses some and is told so by the receiver.
    /// Each batch comes with the time the sink task wrote it.
    pub fn subscribe(
        &self,
    ) -> broadcast::Receiver<(
        std::time::SystemTime,
        datafusion::arrow::record_batch::RecordBatch,
    )> {
        self.tap.subscribe()
    }

    /// Asks the sources to stop; the sinks then commit what they have.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// A handle that stops the pipeline when dropped, for whoever consumes its results
    /// (a subscriber that may disconnect).
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop(self.stop.clone())
    }

    /// The current status.
    pub fn status(&self) -> PipelineStatus {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or(PipelineStatus::Failed("status lock poisoned".into()))
    }

    /// Waits until the pipeline has finished, stopped or failed.
    ///
    /// # Errors
    /// The pipeline's error, if it failed.
    pub async fn wait(&self) -> Result<()> {
        let mut done = self.done.clone();
        while !*done.borrow() {
            if done.changed().await.is_err() {
                break;
            }
        }
        match self.status() {
            PipelineStatus::Failed(e) => {
                let source = self
                    .error
                    .lock()
                    .ok()
                    .and_then(|mut slot| slot.take())
                    .unwrap_or(Error::Internal(e));
                Err(Error::Pipeline {
                    pipeline: self.name.clone(),
                    source: Box::new(source),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The [`SourceContext::reader`] of source `source` in pipeline `pipeline` (read by task
/// `task` when the pipeline reads it more than once): `<pipeline>-<source>[-<task>]` when
/// both names are plain (ASCII letters, digits, `_`), so that service-side names such as a
/// JetStream consumer stay readable. Otherwise each name has its other characters replaced
/// by `_` and a hash of the exact names is added, so that two different pairs never meet
/// (`a`/`b-c` and `a-b`/`c` would both read `a-b-c`) and the id stays a valid name.
fn reader_id(pipeline: &str, source: &str, task: Option<usize>) -> String {
    let (p, s) = (
        sluice_connectors::commit::tag(pipeline),
        sluice_connectors::commit::tag(source),
    );
    let plain = p == pipeline && s == source;
    let mut id = format!("{p}-{s}");
    if !plain {
        let exact = format!("{pipeline}\0{source}");
        id.push_str(&format!(
            "-{:016x}",
            twox_hash::XxHash64::oneshot(0, exact.as_bytes())
        ));
    }
    if let Some(t) = task {
        id.push_str(&format!("-{t}"));
    }
    id
}

fn need(
    schema: Option<datafusion::arrow::datatypes::SchemaRef>,
) -> Result<datafusion::arrow::datatypes::SchemaRef> {
    schema.ok_or_else(|| Error::Internal("operator without an input".into()))
}

#[cfg(test)]
mod tests {
    use super::reader_id;

    #[test]
    fn reader_ids_are_readable_distinct_and_valid_names() {
        assert_eq!(reader_id("hot", "readings", None), "hot-readings");
        assert_eq!(reader_id("hot", "readings", Some(3)), "hot-readings-3");
        // Names that would meet once joined by '-' stay apart.
        assert_ne!(reader_id("a", "b-c", None), reader_id("a-b", "c", None));
        // What a JetStream consumer name may not hold is gone.
        let odd = reader_id("sch.view", "my source*>", None);
        assert!(
            odd.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "{odd}"
        );
        assert_eq!(odd, reader_id("sch.view", "my source*>", None), "stable");
    }
}
