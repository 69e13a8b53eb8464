//! A source task: reads batches from a connector, advances the source's watermark after
//! each batch (max event time minus the declared delay, never backwards), projects the
//! columns the plan reads, and sends both downstream. At the end of a bounded input the
//! watermark becomes +infinity so that every window closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, TimestampNanosecondArray};
use datafusion::arrow::compute::{cast, max};
use datafusion::arrow::datatypes::TimestampNanosecondType;
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
