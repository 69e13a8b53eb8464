//! Exactly-once delivery for the `kafka` sink (`delivery_guarantee = 'exactly_once'`): one
//! Kafka transaction per checkpoint, committed once the checkpoint is stored.
//!
//! The transaction holding the rows before barrier `n` has the transactional id
//! `<prefix>-<n>`. At the barrier the sink waits for the broker to acknowledge its
//! messages, adds the commit marker to the transaction (offset `n` of consumer group
//! `<prefix>-commit-marker` on partition 0 of the topic, with the transactional id as its
//! metadata, which becomes visible with the rows and only with them) and hands the producer, its transaction still open, to [`Staged`]; a new
//! producer opens `<prefix>-<n+1>`. Once checkpoint `n` is stored, [`commit`] commits the
//! staged transaction.
//!
//! librdkafka cannot take over a transaction another process opened, so a crash after a
//! checkpoint is stored and before its commit leaves a transaction no one can commit.
//! Recovery therefore first fences its transactional id, which makes the broker finish it
//! (a commit under way completes, an open transaction is aborted), then reads the marker:
//! if it says `n`, the rows are visible; if it names an earlier transaction, they are lost
//! ([`Committed::Lost`]) and the pipeline resumes from the checkpoint before, which writes
//! them again. (A marker the broker expired, after a week without the sink, is taken as
//! committed, unless no marker was ever committed before that transaction's.) A new run also
//! fences the ids a dead run may have left open, so that `read_committed` consumers are not
//! held back until those transactions time out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::{CONNECTOR, kafka_error};
use crate::error::{Error, Result};
use crate::sink::{Committed, RunCheckpoints};

/// How long one transactional call to the broker may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a commit is retried while the broker is away.
const COMMIT_PATIENCE: Duration = Duration::from_secs(120);
/// The most transactional ids of dead runs that a new run fences when it starts.
const MAX_FENCED: u64 = 16;

/// Producers whose transaction is flushed and marked, waiting for their checkpoint to be
/// stored. The running sink stages them; the sink's config commits them.
#[derive(Clone, Default)]
pub(super) struct Staged(Arc<Mutex<HashMap<String, FutureProducer>>>);

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(map.keys()).finish()
    }
}

impl Staged {
    fn insert(&self, transactional_id: String, producer: FutureProducer) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(transactional_id, producer);
    }

    fn take(&self, transactional_id: &str) -> Option<FutureProducer> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(transactional_id)
    }
}

/// What a checkpoint stores of a staged transaction.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    transactional_id: String,
    /// The commit marker: an offset of this consumer group, on partition 0 of this topic.
    group: String,
    topic: String,
    /// The barrier the transaction ends at, which is the marker's offset.
    checkpoint: u64,
    /// Whether a marker was committed before this transaction's: the run resumed from a
    /// checkpoint, or staged a transaction before. If not, no marker may exist yet, and
    /// a missing or foreign one means this transaction never committed.
    #[serde(default)]
    marked_before: bool,
}

/// The transactional id of the transaction ending at barrier `n`.
fn transactional_id(prefix: &str, n: u64) -> String {
    format!("{prefix}-{n}")
}

/// Runs a blocking librdkafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("a kafka transaction call failed to run: {e}")))?
}

/// A producer for `transactional_id`, registered with the broker: any transaction an
/// earlier producer of that id left is finished first (completed if its commit was under
/// way, aborted otherwise), and that producer is fenced off.
async fn init(config: &ClientConfig, transactional_id: &str) -> Result<FutureProducer> {
    let mut config = config.clone();
    config.set("transactional.id", transactional_id);
    blocking(move || {
        let producer: FutureProducer = config.create().map_err(kafka_error)?;
        producer.init_transactions(TIMEOUT).map_err(kafka_error)?;
        Ok(producer)
    })
    .await
}

/// Finishes whatever transaction a producer of `transactional_id` left, and fences that
/// producer off: registering the id does it; the new producer is not needed after.
async fn fence(config: &ClientConfig, transactional_id: &str) -> Result<()> {
    let producer = init(config, transactional_id).await?;
    // Dropping a producer waits for its threads: off the async threads too.
    blocking(move || {
        drop(producer);
        Ok(())
    })
    .await
}

/// The transactional side of a running `kafka` sink.
pub(super) struct Transactions {
    /// Producer settings, without a transactional id.
    config: ClientConfig,
    prefix: String,
    topic: String,
    staged: Staged,
    /// A member-less consumer of the marker group, for the group metadata a transaction's
    /// offsets are committed under.
    marker: Arc<BaseConsumer>,
    /// The barrier the open transaction ends at: its id's number.
    open: u64,
    /// Whether the sink ended, aborting its last, empty transaction.
    ended: bool,
    /// Whether a marker was committed before the open transaction's (see [`Pending`]).
    marked_before: bool,
}

impl Transactions {
    /// Fences the transactions a dead run may have left open, then opens the first one.
    /// Returns the producer to send with.
    ///
    /// # Errors
    /// When the broker cannot be reached or does not support transactions.
    pub(super) async fn start(
        config: ClientConfig,
        marker_config: &ClientConfig,
        prefix: String,
        topic: String,
        staged: Staged,
        run: RunCheckpoints,
    ) -> Result<(Self, FutureProducer)> {
        // A dead run's transactions end at barriers after the one it was restored to, up
        // to one past the newest it started (`run.next - 1`).
        let first = run.restored.map_or(1, |r| r + 1);
        for n in first.max((run.next + 1).saturating_sub(MAX_FENCED))..=run.next + 1 {
            if n != run.next {
                fence(&config, &transactional_id(&prefix, n)).await?;
            }
        }
        let marker = marker_consumer(marker_config, &marker_group(&prefix))?;
        let producer = init(&config, &transactional_id(&prefix, run.next)).await?;
        producer.begin_transaction().map_err(kafka_error)?;
        Ok((
            Self {
                config,
                prefix,
                topic,
                staged,
                marker: Arc::new(marker),
                open: run.next,
                ended: false,
                marked_before: run.restored.is_some(),
            },
            producer,
        ))
    }

    /// At barrier `checkpoint`, once every message sent is acknowledged: marks the open
    /// transaction, stages it for the checkpoint's commit and opens the next one in
    /// `producer`. Returns what the checkpoint stores of the staged transaction.
    ///
    /// # Errors
    /// When the broker fails.
    pub(super) async fn stage(
        &mut self,
        producer: &mut FutureProducer,
        checkpoint: u64,
    ) -> Result<serde_json::Value> {
        let id = transactional_id(&self.prefix, self.open);
        let offset = i64::try_from(checkpoint)
            .map_err(|_| Error::Internal(format!("checkpoint id {checkpoint} overflows")))?;
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&self.topic, 0, Offset::Offset(offset))
            .map_err(kafka_error)?;
        // The metadata names the transaction, so that an offset some other client
        // committed for the group is never taken for this marker.
        if let Some(mut marker) = offsets.find_partition(&self.topic, 0) {
            marker.set_metadata(id.as_str());
        }
        let (p, marker) = (producer.clone(), Arc::clone(&self.marker));
        blocking(move || {
            let group = marker.group_metadata().ok_or_else(|| {
                Error::Internal("the marker consumer has no group metadata".into())
            })?;
            p.send_offsets_to_transaction(&offsets, &group, TIMEOUT)
                .map_err(kafka_error)
        })
        .await?;
        let next = init(
            &self.config,
            &transactional_id(&self.prefix, checkpoint + 1),
        )
        .await?;
        next.begin_transaction().map_err(kafka_error)?;
        let staged = std::mem::replace(producer, next);
        self.staged.insert(id.clone(), staged);
        self.open = checkpoint + 1;
        let pending = Pending {
            transactional_id: id,
            group: marker_group(&self.prefix),
            topic: self.topic.clone(),
            checkpoint,
            marked_before: self.marked_before,
        };
        // This transaction commits before the next one is stored: the next can count on a
        // marker.
        self.marked_before = true;
        serde_json::to_value(pending)
            .map_err(|e| Error::Internal(format!("cannot encode a kafka transaction: {e}")))
    }

    /// At the end: aborts the open transaction. It holds no rows when the pipeline ended
    /// with a last checkpoint; rows sent after the last checkpoint are written again from
    /// it on the next start.
    ///
    /// # Errors
    /// When the broker fails.
    pub(super) async fn abort_open(&mut self, producer: &FutureProducer) -> Result<()> {
        let p = producer.clone();
        blocking(move || p.abort_transaction(TIMEOUT).map_err(kafka_error)).await?;
        self.ended = true;
        Ok(())
    }

    /// Whether a transaction is open: the sink has not ended.
    pub(super) fn is_open(&self) -> bool {
        !self.ended
    }
}

/// Commits the transaction a checkpoint staged (`pending`, as [`Transactions::stage`]
/// returned it). When this process no longer holds its producer (recovery after a crash),
/// the transaction is finished by fencing its id, and the marker tells whether it was
/// committed.
///
/// # Errors
/// When `pending` is not a staged transaction, or the broker fails.
pub(super) async fn commit(
    staged: &Staged,
    config: &ClientConfig,
    marker_config: &ClientConfig,
    pending: &serde_json::Value,
) -> Result<Committed> {
    let pending: Pending = serde_json::from_value(pending.clone())
        .map_err(|e| Error::Internal(format!("not a staged kafka transaction: {e}")))?;
    if let Some(producer) = staged.take(&pending.transactional_id) {
        return blocking(move || commit_with_retries(&producer)).await;
    }
    fence(config, &pending.transactional_id).await?;
    let marker = marker_consumer(marker_config, &pending.group)?;
    let (topic, checkpoint) = (pending.topic.clone(), pending.checkpoint);
    let read = blocking(move || {
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, 0);
        let offsets = marker
            .committed_offsets(partitions, TIMEOUT)
            .map_err(kafka_error)?;
        let marked = offsets
            .find_partition(&topic, 0)
            .map(|e| (e.offset(), e.metadata().to_string()));
        drop(marker);
        Ok(marked)
    })
    .await?;
    let wanted = i64::try_from(checkpoint).unwrap_or(i64::MAX);
    let id = &pending.transactional_id;
    Ok(match read {
        Some((Offset::Offset(o), marker)) if o == wanted && marker == *id => Committed::Visible,
        // Transactions commit in checkpoint order: a later one's marker means this one
        // committed too (recovery skipped a damaged newer checkpoint).
        Some((Offset::Offset(o), _)) if o > wanted && pending.marked_before => Committed::Visible,
        // The broker expires the offsets of a group nobody is in after
        // `offsets.retention.minutes` (7 days by default): a sink stopped that long has no
        // marker left, though one was committed; its last transaction most likely was too.
        Some((Offset::Invalid, _)) | None if pending.marked_before => {
            tracing::warn!(
                connector = CONNECTOR,
                group = %pending.group,
                transaction = %id,
                "the commit marker is gone (expired with the group's offsets?): the transaction of checkpoint {checkpoint} is taken as committed"
            );
            Committed::Visible
        }
        _ => Committed::Lost,
    })
}

/// The consumer group whose offset on partition 0 of the topic marks the last committed
/// transaction. Distinct from the sources' default groups (`sluice-<topic>`).
fn marker_group(prefix: &str) -> String {
    format!("{prefix}-commit-marker")
}

/// A consumer of the marker `group` that never joins it: for the group metadata a
/// transaction commits its marker under, and to read the marker back.
fn marker_consumer(config: &ClientConfig, group: &str) -> Result<BaseConsumer> {
    config
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // Read the committed marker only: a later transaction's marker, still pending in
        // a transaction a dead run left open, would otherwise hold the read back until
        // the broker times that transaction out.
        .set("isolation.level", "read_uncommitted")
        .create()
        .map_err(kafka_error)
}

/// Commits `producer`'s transaction, retrying while the error is retriable (the broker is
/// away) for up to [`COMMIT_PATIENCE`].
fn commit_with_retries(producer: &FutureProducer) -> Result<Committed> {
    let started = std::time::Instant::now();
    loop {
        match producer.commit_transaction(TIMEOUT) {
            Ok(()) => return Ok(Committed::Visible),
            Err(rdkafka::error::KafkaError::Transaction(e))
                if e.is_retriable() && started.elapsed() < COMMIT_PATIENCE =>
            {
                tracing::warn!(connector = CONNECTOR, error = %e, "kafka commit failed; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(kafka_error(e)),
        }
    }
}
