//! A source task: reads batches from a connector, advances the source's watermark after
//! each batch (max event time minus the declared delay, never backwards), projects the
//! columns the plan reads, and sends both downstream. At the end of a bounded input the
//! watermark becomes +infinity so that every window closes.
//!
//! With checkpoints, the task injects a barrier between two batches whenever the
//! coordinator asks, acknowledging it with the connector's position; once its input has
//! ended (or it was stopped) it waits for the pipeline's last checkpoint before it ends the
//! stream.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::compute::{cast, max};
use datafusion::arrow::datatypes::TimestampNanosecondType;
use sluice_connectors::{Source, SourceContext, SourceDecl};
use sluice_planner::WatermarkSpec;
use tokio::sync::{mpsc, watch};

use crate::checkpoint::coordinator::Ack;
use crate::error::{Error, Result};
use crate::message::{Barrier, Message, WATERMARK_END, WATERMARK_MIN, Watermark};
use crate::metrics::PipelineMetrics;
use crate::runtime::chain::downstream_closed;

pub(crate) struct SourceTask {
    pub decl: SourceDecl,
    pub watermark: Option<WatermarkSpec>,
    pub projection: Option<Vec<usize>>,
    pub ctx: SourceContext,
    pub outputs: Vec<mpsc::Sender<Message>>,
    pub stop: watch::Receiver<bool>,
    pub metrics: Arc<PipelineMetrics>,
    /// Checkpointing, if on.
    pub checkpoints: Option<SourceCheckpoints>,
}

/// A source task's part in checkpoints.
pub(crate) struct SourceCheckpoints {
    /// The task's number, for the manifest.
    pub task: usize,
    /// The newest checkpoint the coordinator asked for.
    pub trigger: watch::Receiver<Barrier>,
    /// The newest complete checkpoint.
    pub completed: watch::Receiver<u64>,
    /// Where acknowledgements go.
    pub acks: mpsc::UnboundedSender<Ack>,
    /// The last barrier this task sent (the restored checkpoint's number after a restart).
    pub last_sent: u64,
    /// The watermark restored from the checkpoint.
    pub watermark: Watermark,
}

impl SourceTask {
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut source: Box<dyn Source> = self.decl.config.open(self.ctx.clone()).await?;
        let mut watermark = self
            .checkpoints
            .as_ref()
            .map_or(WATERMARK_MIN, |c| c.watermark);
        if watermark > WATERMARK_MIN {
            self.send(Message::Watermark(watermark)).await?;
        }
        let mut stopped = false;
        // A source that never checkpoints never wakes for a trigger.
        let (_never_tx, never) = watch::channel(Barrier { id: 0, last: false });
        let mut trigger = self
            .checkpoints
            .as_ref()
            .map_or(never, |c| c.trigger.clone());
        let mut coordinator_alive = true;
        let (_never_done_tx, never_done) = watch::channel(0u64);
        let mut completed = self
            .checkpoints
            .as_ref()
            .map_or(never_done, |c| c.completed.clone());
        let mut splits = SplitWatermarks::default();
        loop {
            // `next_batch` is cancel-safe (see `Source`): a stop or a barrier in the middle
            // of it loses no row.
            let next = tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        stopped = true;
                        break;
                    }
                    continue;
                }
                changed = trigger.changed(), if coordinator_alive => {
                    if changed.is_ok() {
                        let wanted = *trigger.borrow_and_update();
                        let due = self.prepare_barriers(source.as_mut(), wanted, watermark);
                        self.send_barriers(due).await?;
                    } else {
                        coordinator_alive = false;
                    }
                    continue;
                }
                changed = completed.changed(), if coordinator_alive => {
                    if changed.is_ok() {
                        let id = *completed.borrow_and_update();
                        source.checkpoint_complete(id).await?;
                    }
                    continue;
                }
                next = source.next_batch() => next?,
            };
            let Some(batch) = next else { break };
            if batch.num_rows() == 0 {
                continue;
            }
            self.metrics
                .rows_in
                .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let candidate = match &self.watermark {
                Some(spec) => watermark_candidate(spec, &batch)?,
                None => None,
            };
            let candidate = match source.split() {
                Some(split) => splits.advance(split, candidate, self.decl.idle_timeout, |i| {
                    source.split_has_backlog(i)
                }),
                None => candidate,
            };
            let batch = match &self.projection {
                Some(p) => batch.project(p)?,
                None => batch,
            };
            for tx in &self.outputs {
                tx.send(Message::Batch(batch.clone()))
                    .await
                    .map_err(|_| downstream_closed())?;
            }
            if let Some(c) = candidate.filter(|c| *c > watermark) {
                watermark = c;
                for tx in &self.outputs {
                    tx.send(Message::Watermark(watermark))
                        .await
                        .map_err(|_| downstream_closed())?;
                }
            }
        }
        if !stopped {
            watermark = WATERMARK_END;
            self.send(Message::Watermark(WATERMARK_END)).await?;
        }
        if let Some(c) = &self.checkpoints {
            // Wait for the last checkpoint, answering every barrier until then.
            let _ = c.acks.send(Ack::SourceDone { stopped });
            let mut last = None;
            while trigger.changed().await.is_ok() {
                let wanted = *trigger.borrow_and_update();
                let due = self.prepare_barriers(source.as_mut(), wanted, watermark);
                self.send_barriers(due).await?;
                if wanted.last {
                    last = Some(wanted.id);
                    break;
                }
            }
            // Acknowledge the input the last checkpoint covers before ending the stream.
            if let Some(last) = last {
                while *completed.borrow_and_update() < last {
                    if completed.changed().await.is_err() {
                        break;
                    }
                }
                if *completed.borrow() >= last {
                    source.checkpoint_complete(last).await?;
                }
            }
        }
        for tx in &self.outputs {
            let _ = tx.send(Message::End).await;
        }
        Ok(())
    }

    async fn send(&self, msg: Message) -> Result<()> {
        for tx in &self.outputs {
            tx.send(msg.clone())
                .await
                .map_err(|_| downstream_closed())?;
        }
        Ok(())
    }

    /// Every barrier up to `wanted` not sent yet (a trigger may have been replaced by a
    /// newer one before this task saw it), each acknowledged with the source's position.
    fn prepare_barriers(
        &mut self,
        source: &mut dyn Source,
        wanted: Barrier,
        watermark: Watermark,
    ) -> Vec<Barrier> {
        let Some(c) = self.checkpoints.as_mut() else {
            return Vec::new();
        };
        let mut due = Vec::new();
        while c.last_sent < wanted.id {
            c.last_sent += 1;
            let barrier = Barrier {
                id: c.last_sent,
                last: wanted.last && c.last_sent == wanted.id,
            };
            source.on_barrier(barrier.id);
            due.push(barrier);
            let _ = c.acks.send(Ack::Source {
                id: barrier.id,
                task: c.task,
                position: source.position(),
                watermark,
            });
        }
        due
    }

    async fn send_barriers(&self, due: Vec<Barrier>) -> Result<()> {
        for barrier in due {
            self.send(Message::Barrier(barrier)).await?;
        }
        Ok(())
    }
}

/// Watermarks per split (Kafka partition): the source's watermark is the minimum over the
/// splits that are not idle, so a partition behind the others holds it back and one that
/// stays silent while the others go on stops doing so after the idle timeout, unless the
/// source knows it has input waiting (a backlog: it is behind, not idle). When the whole
/// source was silent (no new data anywhere), no split counts as idle: the first one to get
/// data again must not run ahead of the others.
#[derive(Debug, Default)]
struct SplitWatermarks {
    /// Per split: its watermark and when it last had rows.
    splits: Vec<(Option<i64>, tokio::time::Instant)>,
    /// When any split last had rows.
    last_any: Option<tokio::time::Instant>,
}

/// How long a split without rows holds back the watermark when the source sets no
/// `idle_timeout`.
const DEFAULT_SPLIT_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

impl SplitWatermarks {
    /// Records a batch of `split` allowing `candidate`, and returns the source's watermark.
    fn advance(
        &mut self,
        split: sluice_connectors::Split,
        candidate: Option<i64>,
        idle: Option<std::time::Duration>,
        has_backlog: impl Fn(usize) -> bool,
    ) -> Option<i64> {
        let now = tokio::time::Instant::now();
        let idle = idle.unwrap_or(DEFAULT_SPLIT_IDLE);
        if self.splits.len() < split.count {
            self.splits.resize(split.count, (None, now));
        }
        if self.last_any.is_some_and(|t| now.duration_since(t) >= idle) {
            for s in &mut self.splits {
                s.1 = now;
            }
        }
        self.last_any = Some(now);
        if let Some(s) = self.splits.get_mut(split.index) {
            s.0 = s.0.max(candidate);
            s.1 = now;
        }
        // The minimum over active splits; one active without event time yet holds
        // everything back.
        let mut min: Option<i64> = None;
        for (i, (w, seen)) in self.splits.iter().enumerate() {
            if now.duration_since(*seen) < idle || has_backlog(i) {
                let w = (*w)?;
                min = Some(min.map_or(w, |m| m.min(w)));
            }
        }
        min
    }
}

/// The watermark a batch allows: the watermark expression over the batch's largest event
/// time. Evaluating it on one value instead of every row is exact because a watermark
/// expression (the column minus a delay) never decreases as the column grows.
fn watermark_candidate(spec: &WatermarkSpec, batch: &RecordBatch) -> Result<Option<i64>> {
    let target = spec.input.field(0).data_type();
    let column = cast(batch.column(spec.column_index), target)?;
    let Some(latest) = column
        .as_primitive_opt::<TimestampNanosecondType>()
        .and_then(max)
    else {
        return Ok(None);
    };
    let one = cast(&TimestampNanosecondArray::from(vec![latest]), target)?;
    let one = RecordBatch::try_new(Arc::clone(&spec.input), vec![one])?;
    let value = spec.expr.evaluate(&one)?.into_array(1)?;
    let value = value
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| {
            Error::Internal("watermark expression is not a nanosecond timestamp".into())
        })?;
    Ok(value.iter().next().flatten())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_connectors::Split;

    use super::SplitWatermarks;

    fn split(index: usize) -> Split {
        Split { index, count: 2 }
    }

    fn no_backlog(_: usize) -> bool {
        false
    }

    /// A partition with input waiting is behind, not idle, however long another partition
    /// keeps the source busy. (The bug: a Kafka partition whose messages sat behind more
    /// than 5 s of another partition's in the client's queue was taken for idle, the
    /// watermark passed its rows, and they were dropped as late.)
    #[tokio::test]
    async fn a_partition_with_a_backlog_is_never_idle() {
        let idle = Some(Duration::from_millis(100));
        let mut w = SplitWatermarks::default();
        w.advance(split(0), Some(100), idle, |_| true);
        assert_eq!(w.advance(split(1), Some(50), idle, |_| true), Some(50));
        for t in [200, 300, 400] {
            tokio::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(w.advance(split(0), Some(t), idle, |i| i == 1), Some(50));
        }
        // Once it has caught up and stays silent, it is idle.
        assert_eq!(w.advance(split(0), Some(500), idle, no_backlog), Some(500));
    }

    #[tokio::test]
    async fn a_partition_behind_holds_the_watermark_back_until_it_is_idle() {
        let idle = Some(Duration::from_millis(200));
        let mut w = SplitWatermarks::default();
        assert_eq!(
            w.advance(split(0), Some(100), idle, no_backlog),
            None,
            "split 1 has no time yet"
        );
        assert_eq!(w.advance(split(1), Some(50), idle, no_backlog), Some(50));
        assert_eq!(w.advance(split(0), Some(200), idle, no_backlog), Some(50));
        // Split 1 stays silent while split 0 goes on: past the idle timeout it stops counting.
        for t in [210, 220, 230] {
            tokio::time::sleep(Duration::from_millis(100)).await;
            w.advance(split(0), Some(t), idle, no_backlog);
        }
        assert_eq!(w.advance(split(0), Some(240), idle, no_backlog), Some(240));
    }

    #[tokio::test]
    async fn after_the_whole_source_was_silent_no_partition_runs_ahead() {
        let idle = Some(Duration::from_millis(100));
        let mut w = SplitWatermarks::default();
        w.advance(split(0), Some(100), idle, no_backlog);
        assert_eq!(w.advance(split(1), Some(50), idle, no_backlog), Some(50));
        // Nothing anywhere for longer than the idle timeout (a broker outage), then split 0
        // comes back first: split 1 must still hold the watermark back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(w.advance(split(0), Some(300), idle, no_backlog), Some(50));
        assert_eq!(w.advance(split(1), Some(290), idle, no_backlog), Some(290));
    }
}
