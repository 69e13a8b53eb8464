//! A chain task: several operators run back to back in one task, fed by one or more input
//! channels. The task aligns watermarks (the minimum over inputs that have not ended) and
//! hands each operator its hooks in order.
//!
//! It also aligns checkpoint barriers: once an input has delivered a barrier, its later
//! messages are held back until the barrier has come on every other input; then every
//! operator snapshots its state, the snapshot goes to the coordinator, the barrier goes
//! downstream, and the held messages are processed.

use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use std::collections::VecDeque;

use crate::checkpoint::coordinator::Ack;
use crate::error::{Error, Result};
use crate::message::{Barrier, Message, WATERMARK_MIN, Watermark};
use crate::operator::{Operator, Output};
use crate::runtime::state_budget::StateBudget;

/// A chain task's part in checkpoints.
pub(crate) struct ChainCheckpoints {
    /// The task's number, for the manifest.
    pub task: usize,
    /// Where snapshots go.
    pub acks: mpsc::UnboundedSender<Ack>,
}

/// Runs `ops` over the messages of `inputs` and sends the results to every output.
/// `idle[i]` is the idle timeout of input i: after that long without a message the input
/// stops holding back the aligned watermark, until it sends again.
pub(crate) async fn run_chain(
    mut ops: Vec<Box<dyn Operator>>,
    inputs: Vec<mpsc::Receiver<Message>>,
    idle: Vec<Option<Duration>>,
    outputs: Vec<mpsc::Sender<Message>>,
    checkpoints: Option<ChainCheckpoints>,
    mut budget: Option<StateBudget>,
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
    let mut last_seen = vec![Instant::now(); n];
    let mut current = WATERMARK_MIN;
    let mut produced = Vec::new();
    let watch_idle = n > 1 && idle.iter().any(Option::is_some);
    // Barrier alignment: which inputs delivered the barrier being aligned, what they sent
    // after it, and held messages released for processing.
    let mut arrived = vec![false; n];
    let mut held: Vec<VecDeque<Message>> = (0..n).map(|_| VecDeque::new()).collect();
    let mut replay: VecDeque<(usize, Message)> = VecDeque::new();
    let mut aligning: Option<Barrier> = None;
    let mut tick = tokio::time::interval(
        idle.iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(10))
            / 2,
    );
    loop {
        let next = if let Some(m) = replay.pop_front() {
            Some(m)
        } else if watch_idle {
            tokio::select! {
                next = merged.next() => next,
                _ = tick.tick() => {
                    let ignored = idle_inputs(&idle, &last_seen, &ended);
                    current = advance(&mut ops, &input_wm, &ignored, current, &outputs, &mut produced).await?;
                    continue;
                }
            }
        } else {
            merged.next().await
        };
        let Some((i, msg)) = next else { break };
        last_seen[i] = Instant::now();
        if arrived[i] {
            held[i].push_back(msg);
            continue;
        }
        match msg {
            Message::Barrier(b) => {
                arrived[i] = true;
                aligning = Some(b);
                if aligned(&arrived, &ended) {
                    complete_barrier(&mut ops, b, checkpoints.as_ref(), &outputs).await?;
                    release(&mut arrived, &mut held, &mut replay, &mut aligning);
                }
            }
            Message::Batch(batch) => {
                push_batch(&mut ops, 0, i, batch, &mut produced)?;
                if let Some(b) = budget.as_mut() {
                    b.account(&ops)?;
                }
                send_all(&outputs, &mut produced).await?;
            }
            Message::Watermark(w) => {
                input_wm[i] = input_wm[i].max(w);
                let ignored = idle_inputs(&idle, &last_seen, &ended);
                current = advance(
                    &mut ops,
                    &input_wm,
                    &ignored,
                    current,
                    &outputs,
                    &mut produced,
                )
                .await?;
                if let Some(b) = budget.as_mut() {
                    b.account(&ops)?;
                }
            }
            Message::End => {
                ended[i] = true;
                if let Some(b) = aligning
                    && aligned(&arrived, &ended)
                {
                    complete_barrier(&mut ops, b, checkpoints.as_ref(), &outputs).await?;
                    release(&mut arrived, &mut held, &mut replay, &mut aligning);
                    continue;
                }
                if ended.iter().all(|e| *e) && replay.is_empty() {
                    break;
                }
                let ignored = idle_inputs(&idle, &last_seen, &ended);
                current = advance(
                    &mut ops,
                    &input_wm,
                    &ignored,
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

/// Whether every input that has not ended delivered the barrier being aligned.
fn aligned(arrived: &[bool], ended: &[bool]) -> bool {
    arrived.iter().zip(ended).all(|(a, e)| *a || *e)
}

/// Snapshots every operator for barrier `b`, hands the snapshot to the coordinator and
/// sends the barrier on.
async fn complete_barrier(
    ops: &mut [Box<dyn Operator>],
    b: Barrier,
    checkpoints: Option<&ChainCheckpoints>,
    outputs: &[mpsc::Sender<Message>],
) -> Result<()> {
    if let Some(c) = checkpoints {
        let states = ops
            .iter_mut()
            .map(|op| op.snapshot())
            .collect::<Result<Vec<_>>>()?;
        let _ = c.acks.send(Ack::Chain {
            id: b.id,
            task: c.task,
            states,
        });
    }
    for tx in outputs {
        tx.send(Message::Barrier(b))
            .await
            .map_err(|_| downstream_closed())?;
    }
    Ok(())
}

/// Ends an alignment: the held messages are processed next, in order per input.
fn release(
    arrived: &mut [bool],
    held: &mut [VecDeque<Message>],
    replay: &mut VecDeque<(usize, Message)>,
    aligning: &mut Option<Barrier>,
) {
    arrived.fill(false);
    *aligning = None;
    for (j, queue) in held.iter_mut().enumerate() {
        replay.extend(queue.drain(..).map(|m| (j, m)));
    }
}

/// The inputs that do not hold back the watermark: ended ones, and idle ones.
fn idle_inputs(idle: &[Option<Duration>], last_seen: &[Instant], ended: &[bool]) -> Vec<bool> {
    let now = Instant::now();
    ended
        .iter()
        .zip(last_seen)
        .zip(idle)
        .map(|((e, seen), timeout)| *e || timeout.is_some_and(|t| now.duration_since(*seen) >= t))
        .collect()
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
    Error::DownstreamClosed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::union::UnionOperator;
    use datafusion::arrow::datatypes::Schema;
    use std::sync::Arc;

    async fn next_watermark(rx: &mut mpsc::Receiver<Message>) -> Option<Watermark> {
        while let Some(m) = rx.recv().await {
            match m {
                Message::Watermark(w) => return Some(w),
                Message::End => return None,
                Message::Batch(_) | Message::Barrier(_) => {}
            }
        }
        None
    }

    #[tokio::test]
    async fn watermark_is_the_minimum_over_inputs() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let union = Box::new(UnionOperator::new(Arc::new(Schema::empty())));
        let task = tokio::spawn(run_chain(
            vec![union],
            vec![a_rx, b_rx],
            vec![None, None],
            vec![out_tx],
            None,
            None,
        ));
        a_tx.send(Message::Watermark(10)).await.unwrap();
        b_tx.send(Message::Watermark(5)).await.unwrap();
        assert_eq!(next_watermark(&mut out_rx).await, Some(5));
        b_tx.send(Message::Watermark(20)).await.unwrap();
        assert_eq!(next_watermark(&mut out_rx).await, Some(10));
        a_tx.send(Message::End).await.unwrap();
        // An ended input no longer holds the watermark back.
        assert_eq!(next_watermark(&mut out_rx).await, Some(20));
        b_tx.send(Message::End).await.unwrap();
        assert_eq!(next_watermark(&mut out_rx).await, None);
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_input_stops_holding_the_watermark_back() {
        let (a_tx, a_rx) = mpsc::channel(8);
        let (_b_tx, b_rx) = mpsc::channel::<Message>(8);
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let union = Box::new(UnionOperator::new(Arc::new(Schema::empty())));
        let idle = vec![None, Some(Duration::from_millis(50))];
        let _task = tokio::spawn(run_chain(
            vec![union],
            vec![a_rx, b_rx],
            idle,
            vec![out_tx],
            None,
            None,
        ));
        a_tx.send(Message::Watermark(10)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), next_watermark(&mut out_rx))
            .await
            .unwrap();
        assert_eq!(
            got,
            Some(10),
            "the silent input went idle and the watermark advanced"
        );
    }

    #[tokio::test]
    async fn a_barrier_is_aligned_across_inputs() {
        use crate::operators::test_util::batch;
        let b = |v: &'static str| batch("k:i64", &[v]);
        let schema = b("1").schema();
        let (a_tx, a_rx) = mpsc::channel(8);
        let (b_tx, b_rx) = mpsc::channel(8);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let union = Box::new(UnionOperator::new(schema));
        let task = tokio::spawn(run_chain(
            vec![union],
            vec![a_rx, b_rx],
            vec![None, None],
            vec![out_tx],
            Some(ChainCheckpoints {
                task: 3,
                acks: ack_tx,
            }),
            None,
        ));
        let barrier = Barrier { id: 1, last: false };
        a_tx.send(Message::Batch(b("1"))).await.unwrap();
        a_tx.send(Message::Barrier(barrier)).await.unwrap();
        // After its barrier, input A is held back until B's barrier arrives.
        a_tx.send(Message::Batch(b("2"))).await.unwrap();
        a_tx.send(Message::End).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        b_tx.send(Message::Batch(b("3"))).await.unwrap();
        b_tx.send(Message::Barrier(barrier)).await.unwrap();
        b_tx.send(Message::End).await.unwrap();
        let mut seen = Vec::new();
        while let Some(m) = out_rx.recv().await {
            seen.push(match m {
                Message::Batch(batch) => crate::operators::test_util::pretty(vec![batch]).join(";"),
                Message::Barrier(b) => format!("barrier {}", b.id),
                Message::Watermark(w) => format!("watermark {w}"),
                Message::End => "end".to_string(),
            });
        }
        assert_eq!(seen, vec!["1", "3", "barrier 1", "2", "end"]);
        match ack_rx.recv().await {
            Some(Ack::Chain {
                id: 1,
                task: 3,
                states,
            }) => assert_eq!(states.len(), 1),
            other => panic!("expected the chain's snapshot, got {other:?}"),
        }
        task.await.unwrap().unwrap();
    }
}
