//! The sink task: writes the pipeline's result batches to a sink and finishes it (flush
//! and commit) when the input ends or the pipeline is stopped cleanly. At a checkpoint
//! barrier it pre-commits the sink (stages what it wrote) and hands that to the
//! coordinator, which commits it once the checkpoint is complete.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use datafusion::arrow::record_batch::RecordBatch;
use sluice_connectors::Sink;
use tokio::sync::{broadcast, mpsc};

use crate::checkpoint::coordinator::Ack;
use crate::error::Result;
use crate::message::Message;
use crate::metrics::PipelineMetrics;

/// Sleeps until `at` (forever without it; the caller's `select!` guard keeps that branch off).
async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// `tap` gets every batch written, for subscribers; it is fine for nobody to listen.
pub(crate) async fn run_sink(
    mut sink: Box<dyn Sink>,
    mut input: mpsc::Receiver<Message>,
    metrics: Arc<PipelineMetrics>,
    tap: broadcast::Sender<(SystemTime, RecordBatch)>,
    acks: Option<mpsc::UnboundedSender<Ack>>,
) -> Result<()> {
    loop {
        // A sink with time-based work (a file to roll over) gets it done on a quiet input.
        let timer = sink.next_timer();
        let msg = tokio::select! {
            msg = input.recv() => msg,
            () = sleep_until(timer), if timer.is_some() => {
                sink.on_timer().await?;
                continue;
            }
        };
        let Some(msg) = msg else { break };
        match msg {
            Message::Batch(batch) => {
                metrics
                    .rows_out
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if tap.receiver_count() > 0 {
                    let _ = tap.send((SystemTime::now(), batch.clone()));
                }
                sink.write(batch).await?;
            }
            Message::Watermark(w) => metrics.watermark.store(w, Ordering::Relaxed),
            Message::Barrier(b) => {
                let precommit = sink.pre_commit(b.id).await?;
                if let Some(acks) = &acks {
                    let _ = acks.send(Ack::Sink {
                        id: b.id,
                        precommit,
                    });
                }
            }
            Message::End => break,
        }
    }
    sink.finish().await?;
    Ok(())
}
