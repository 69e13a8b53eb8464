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
                        self.barriers(source.position(), wanted, watermark).await?;
                    } else {
                        coordinator_alive = false;
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
            while trigger.changed().await.is_ok() {
                let wanted = *trigger.borrow_and_update();
                self.barriers(source.position(), wanted, watermark).await?;
                if wanted.last {
                    break;
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

    /// Sends every barrier up to `wanted` not sent yet (a trigger may have been replaced
    /// by a newer one before this task saw it) and acknowledges each with the position.
    async fn barriers(
        &mut self,
        position: Option<serde_json::Value>,
        wanted: Barrier,
        watermark: Watermark,
    ) -> Result<()> {
        let Some(c) = self.checkpoints.as_mut() else {
            return Ok(());
        };
        let mut due = Vec::new();
        while c.last_sent < wanted.id {
            c.last_sent += 1;
            let barrier = Barrier {
                id: c.last_sent,
                last: wanted.last && c.last_sent == wanted.id,
            };
            due.push(barrier);
            let _ = c.acks.send(Ack::Source {
                id: barrier.id,
                task: c.task,
                position: position.clone(),
                watermark,
            });
        }
        for barrier in due {
            self.send(Message::Barrier(barrier)).await?;
        }
        Ok(())
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
