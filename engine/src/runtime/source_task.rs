//! A source task: reads batches from a connector, advances the source's watermark after
//! each batch (max event time minus the declared delay, never backwards), projects the
//! columns the plan reads, and sends both downstream. At the end of a bounded input the
//! watermark becomes +infinity so that every window closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, TimestampNanosecondArray};
use sluice_connectors::{Source, SourceContext, SourceDecl};
use sluice_planner::WatermarkSpec;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::message::{Message, WATERMARK_END, WATERMARK_MIN};
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
}

impl SourceTask {
    pub(crate) async fn run(mut self) -> Result<()> {
        let mut source: Box<dyn Source> = self.decl.config.open(self.ctx.clone()).await?;
        let mut watermark = WATERMARK_MIN;
        let mut stopped = false;
        loop {
            let next = tokio::select! {
                biased;
                changed = self.stop.changed() => {
                    if changed.is_err() || *self.stop.borrow() {
                        stopped = true;
                        break;
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
                Some(spec) => {
                    let values = spec.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
                    let values = values
                        .as_any()
                        .downcast_ref::<TimestampNanosecondArray>()
                        .ok_or_else(|| {
                            Error::Internal(
                                "watermark expression is not a nanosecond timestamp".into(),
                            )
                        })?;
                    datafusion::arrow::compute::max(values)
                }
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
            for tx in &self.outputs {
                tx.send(Message::Watermark(WATERMARK_END))
                    .await
                    .map_err(|_| downstream_closed())?;
            }
        }
        for tx in &self.outputs {
            let _ = tx.send(Message::End).await;
        }
        Ok(())
    }
}
