//! A chain task: several operators run back to back in one task, fed by one or more input
//! channels. The task aligns watermarks (the minimum over inputs that have not ended) and
//! hands each operator its hooks in order.

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::message::{Message, WATERMARK_MIN, Watermark};
use crate::operator::{Operator, Output};

/// Runs `ops` over the messages of `inputs` and sends the results to every output.
pub(crate) async fn run_chain(
    mut ops: Vec<Box<dyn Operator>>,
    inputs: Vec<mpsc::Receiver<Message>>,
    outputs: Vec<mpsc::Sender<Message>>,
) -> Result<()> {
    let n = inputs.len();
    let streams = inputs.into_iter().enumerate().map(|(i, rx)| {
        futures::stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|m| ((i, m), rx))
        })
        .boxed()
    });
    let mut merged = futures::stream::select_all(streams);
    let mut input_wm = vec![WATERMARK_MIN; n];
    let mut ended = vec![false; n];
    let mut current = WATERMARK_MIN;
    let mut produced = Vec::new();
    while let Some((i, msg)) = merged.next().await {
        match msg {
            Message::Batch(batch) => {
                push_batch(&mut ops, 0, i, batch, &mut produced)?;
                send_all(&outputs, &mut produced).await?;
            }
            Message::Watermark(w) => {
                input_wm[i] = input_wm[i].max(w);
                current = advance(
                    &mut ops,
                    &input_wm,
                    &ended,
                    current,
                    &outputs,
                    &mut produced,
                )
                .await?;
            }
            Message::End => {
                ended[i] = true;
                if ended.iter().all(|e| *e) {
                    break;
                }
                current = advance(
                    &mut ops,
                    &input_wm,
                    &ended,
                    current,
                    &outputs,
                    &mut produced,
                )
                .await?;
            }
        }
    }
    for tx in &outputs {
        // A closed downstream has already failed and reports its own error.
        let _ = tx.send(Message::End).await;
    }
    Ok(())
}

/// Recomputes the aligned watermark and, if it moved, runs every operator's watermark hook.
async fn advance(
    ops: &mut [Box<dyn Operator>],
    input_wm: &[Watermark],
    ended: &[bool],
    current: Watermark,
    outputs: &[mpsc::Sender<Message>],
    produced: &mut Vec<RecordBatch>,
) -> Result<Watermark> {
    let aligned = input_wm
        .iter()
        .zip(ended)
        .filter(|(_, e)| !**e)
        .map(|(w, _)| *w)
        .min();
    let Some(aligned) = aligned else {
        return Ok(current);
    };
    if aligned <= current {
        return Ok(current);
    }
    for k in 0..ops.len() {
        let mut out = Output::default();
        ops[k].process_watermark(aligned, &mut out)?;
        for b in out.drain() {
            push_batch(ops, k + 1, 0, b, produced)?;
        }
    }
    send_all(outputs, produced).await?;
    for tx in outputs {
        tx.send(Message::Watermark(aligned))
            .await
            .map_err(|_| downstream_closed())?;
    }
    Ok(aligned)
}

/// Pushes a batch through `ops[start..]`, collecting what comes out of the last operator.
fn push_batch(
    ops: &mut [Box<dyn Operator>],
    start: usize,
    input: usize,
    batch: RecordBatch,
    produced: &mut Vec<RecordBatch>,
) -> Result<()> {
    let Some(op) = ops.get_mut(start) else {
        produced.push(batch);
        return Ok(());
    };
    let mut out = Output::default();
    op.process_batch(input, batch, &mut out)?;
    for b in out.drain() {
        push_batch(ops, start + 1, 0, b, produced)?;
    }
    Ok(())
}

async fn send_all(
    outputs: &[mpsc::Sender<Message>],
    produced: &mut Vec<RecordBatch>,
) -> Result<()> {
    for batch in produced.drain(..) {
        if batch.num_rows() == 0 {
            continue;
        }
        for tx in outputs {
            tx.send(Message::Batch(batch.clone()))
                .await
                .map_err(|_| downstream_closed())?;
        }
    }
    Ok(())
}

pub(crate) fn downstream_closed() -> Error {
    Error::Internal("a downstream task stopped early".into())
}
