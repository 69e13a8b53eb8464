//! The running `kafka` source: one consumer assigned every partition of the topic at the
//! offsets to resume from (librdkafka fetches the partitions in parallel in its own
//! threads), each partition's messages taken from its own queue a batch at a time (see
//! [`super::partition_queue`]), buffered per partition and handed out as one batch per
//! partition, so that the engine keeps a watermark per partition.
//!
//! Its position is the next offset of every partition, saved by checkpoints and also
//! committed to the consumer group so that lag tools see it. With `bounded = 'latest'` the
//! source reads up to the high watermarks of the first start (kept in the position, so a
//! restart ends at the same offsets) and then ends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::partition_queue::{Fetched, PartitionQueue};
use super::{KafkaSourceConfig, Start, kafka_error};
use crate::error::{Error, Result};
use crate::format::message::{MessageBuffer, MessageDecoder};
use crate::metrics::ConnectorMetrics;
use crate::source::{Source, SourceContext, Split};

/// How long metadata and offset lookups may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a consumer error before reading again (the client reconnects by itself).
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// What a checkpoint keeps: the next offset per partition, and the end of a bounded read.
#[derive(Debug, Default, Serialize, Deserialize)]
struct KafkaPosition {
    next: BTreeMap<i32, i64>,
    end: Option<BTreeMap<i32, i64>>,
}

/// What is known of a partition's offsets: its high watermark, and the offset after the
/// last message the client delivered (librdkafka's `app_offset`).
#[derive(Debug, Clone, Copy)]
struct Offsets {
    high: i64,
    delivered: i64,
}

/// Per partition, from the watermarks at open and then librdkafka's statistics.
type KnownOffsets = Arc<std::sync::Mutex<BTreeMap<i32, Offsets>>>;

/// The consumer's context: follows the partitions' offsets in librdkafka's statistics,
/// for the lag metric and for telling a partition behind from an idle one.
pub(super) struct LagContext {
    topic: String,
    metrics: Arc<ConnectorMetrics>,
    offsets: KnownOffsets,
}

impl ClientContext for LagContext {
    /// Every `statistics.interval.ms`: the lag is the sum over the topic's partitions of
    /// the high watermark minus the offset read to.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let Ok(mut offsets) = self.offsets.lock() else {
            return;
        };
        for p in topic.partitions.values().filter(|p| p.partition >= 0) {
            if let Some(known) = offsets.get_mut(&p.partition) {
                known.high = known.high.max(p.hi_offset);
                known.delivered = known.delivered.max(p.app_offset);
            }
        }
        let lag: i64 = offsets
            .values()
            .map(|o| (o.high - o.delivered).max(0))
            .sum();
        self.metrics.set_lag(u64::try_from(lag).unwrap_or(0));
    }
}

impl ConsumerContext for LagContext {}

/// The source's consumer.
type KafkaConsumer = BaseConsumer<LagContext>;

/// Messages of one partition not handed out yet.
#[derive(Debug, Default)]
struct Pending {
    messages: MessageBuffer,
    /// Offsets passed over since the last hand-out, with no row: tombstones (messages with
    /// a null value, which delete a key of a compacted topic) and, in a bounded read, the
    /// control records of transactions before the partition's end. The position moves
    /// past them.
    skipped: usize,
    last: i64,
    /// When the first of `messages` (or of the offsets skipped) arrived.
    oldest: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.skipped == 0
    }

    /// The offset the next message must have, in a partition whose next offset to hand out
    /// is `next`.
    fn expected(&self, next: i64) -> i64 {
        if self.is_empty() { next } else { self.last + 1 }
    }

    /// Buffers one message of a partition whose next offset to hand out is `next` and
    /// whose bounded read ends before `end`. A tombstone (`None`) holds no row: it is
    /// passed over, as Flink's and Arroyo's formats pass over a null value.
    fn accept(
        &mut self,
        offset: i64,
        payload: Option<&[u8]>,
        next: i64,
        end: Option<i64>,
        binary: bool,
    ) {
        // Below the position: already handed out (a re-delivery after a reconnect).
        if offset < self.expected(next) {
            return;
        }
        // At or past the end of a bounded read: not part of it, but proof that nothing
        // below the end is still to come (what lies between is control records).
        if let Some(end) = end.filter(|&e| offset >= e) {
            self.reached(end, next, end);
            return;
        }
        self.last = offset;
        self.oldest.get_or_insert_with(Instant::now);
        let Some(payload) = payload else {
            self.skipped += 1;
            return;
        };
        // Bad records are reported at their own offsets (offsets may have gaps).
        let id = u64::try_from(offset).unwrap_or(0);
        if binary {
            self.messages.push_binary(payload, id);
        } else {
            self.messages.push(payload, id);
        }
    }

    /// The client read the partition up to `offset` (its end-of-partition event), in a
    /// bounded read that ends before `end`: what lies between the last message and there
    /// are control records (a transaction's commit or abort marker), never delivered, which
    /// the position must move past for the read to reach its end.
    fn reached(&mut self, offset: i64, next: i64, end: i64) {
        let upto = offset.min(end);
        if upto > self.expected(next) {
            self.last = upto - 1;
            self.skipped += 1;
            self.oldest.get_or_insert_with(Instant::now);
        }
    }
}

/// A running `kafka` source.
pub(super) struct KafkaSource {
    /// The queue of every assigned partition, with the partition's index.
    queues: Vec<(usize, PartitionQueue<LagContext>)>,
    /// Woken when one of `queues` turns non-empty.
    notify: Arc<Notify>,
    consumer: Arc<KafkaConsumer>,
    topic: String,
    ctx: SourceContext,
    /// Partition ids; everything else is indexed like this.
    partitions: Vec<i32>,
    /// Next offset to hand out, per partition.
    next: Vec<i64>,
    /// Bounded reads end before these offsets.
    end: Option<Vec<i64>>,
    pending: Vec<Pending>,
    decoder: MessageDecoder,
    split: Option<Split>,
    /// Offsets per partition, from the statistics.
    offsets: KnownOffsets,
}

impl KafkaSource {
    /// Connects, looks up the topic's partitions and offsets, and assigns them.
    ///
    /// # Errors
    /// When the broker cannot be reached or the topic does not exist.
    pub(super) async fn open(config: KafkaSourceConfig, ctx: SourceContext) -> Result<Self> {
        let offsets = KnownOffsets::default();
        let consumer: KafkaConsumer = config
            .connection
            .client_config(&[
                // A broker answers a fetch once it has data; this bounds the wait of one
                // that has none (and of brokers, such as tansu, that always wait it out).
                ("fetch.wait.max.ms", "10"),
                // When the prefetch queue is full, look again after 10 ms rather than
                // librdkafka's 1 s: a reader faster than one fetch would otherwise idle.
                ("fetch.queue.backoff.ms", "10"),
                // One partition's fetch carries up to 8 MiB (librdkafka's default is 1 MiB),
                // so that a fast reader of one partition waits on fewer round trips.
                ("max.partition.fetch.bytes", "8388608"),
                // Statistics once a second, for the lag metric.
                ("statistics.interval.ms", "1000"),
            ])
            .set("group.id", &config.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // End-of-partition events tell where a partition's last offsets are
            // transaction markers, which are never delivered: a bounded read ends there,
            // and an idle partition is not taken for one behind.
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", config.isolation.as_str())
            .create_with_context(LagContext {
                topic: config.connection.topic.clone(),
                metrics: Arc::clone(&ctx.metrics),
                offsets: Arc::clone(&offsets),
            })
            .map_err(kafka_error)?;
        let consumer = Arc::new(consumer);
        let topic = config.connection.topic.clone();
        let partitions = blocking(&consumer, {
            let topic = topic.clone();
            move |c| {
                let md = c
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                    .map_err(kafka_error)?;
                let t = md.topics().iter().find(|t| t.name() == topic);
                let ids: Vec<i32> = t
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect())
                    .unwrap_or_default();
                if ids.is_empty() {
                    return Err(Error::Input(format!(
                        "kafka topic '{topic}' does not exist or has no partitions"
                    )));
                }
                Ok(ids)
            }
        })
        .await?;
        let mut partitions = partitions;
        partitions.sort_unstable();
        let watermarks = blocking(&consumer, {
            let (topic, partitions) = (topic.clone(), partitions.clone());
            move |c| {
                partitions
                    .iter()
                    .map(|&p| {
                        c.fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                            .map_err(kafka_error)
                    })
                    .collect::<Result<Vec<(i64, i64)>>>()
            }
        })
        .await?;
        let resume: KafkaPosition = match &ctx.resume {
            Some(p) => serde_json::from_value(p.clone()).map_err(|e| {
                Error::Internal(format!("a checkpointed kafka position is unreadable: {e}"))
            })?,
            None => KafkaPosition::default(),
        };
        let next: Vec<i64> = partitions
            .iter()
            .zip(&watermarks)
            .map(|(p, (low, high))| {
                resume.next.get(p).copied().unwrap_or(match config.start {
                    // A partition added since the checkpoint is read from its start: its
                    // messages came after the position `start` applied to.
                    _ if ctx.resume.is_some() => *low,
                    Start::Earliest => *low,
                    Start::Latest => *high,
                })
            })
            .collect();
        let end = config.bounded.then(|| {
            partitions
                .iter()
                .zip(&watermarks)
                .map(|(p, (_, high))| {
                    resume
                        .end
                        .as_ref()
                        .and_then(|e| e.get(p).copied())
                        .unwrap_or(*high)
                })
                .collect::<Vec<i64>>()
        });
        if let Ok(mut known) = offsets.lock() {
            for ((p, (_, high)), next) in partitions.iter().zip(&watermarks).zip(&next) {
                known.insert(
                    *p,
                    Offsets {
                        high: *high,
                        delivered: *next,
                    },
                );
            }
        }
        let mut tpl = TopicPartitionList::new();
        let notify = Arc::new(Notify::new());
        let mut queues = Vec::new();
        for (i, &p) in partitions.iter().enumerate() {
            if end.as_ref().is_none_or(|e| next[i] < e[i]) {
                tpl.add_partition_offset(&topic, p, Offset::Offset(next[i]))
                    .map_err(kafka_error)?;
                // Split off before assigning, so that every message lands in it.
                queues.push((i, PartitionQueue::split(&consumer, &topic, p, &notify)?));
            }
        }
        consumer.assign(&tpl).map_err(kafka_error)?;
        tracing::debug!(
            topic,
            partitions = partitions.len(),
            ?next,
            ?end,
            "kafka source assigned"
        );
        let decoder = config.format.decoder(&config.schema)?;
        Ok(Self {
            pending: partitions.iter().map(|_| Pending::default()).collect(),
            queues,
            notify,
            consumer,
            topic,
            ctx,
            partitions,
            next,
            end,
            decoder,
            split: None,
            offsets,
        })
    }

    /// Whether a bounded read has handed out everything up to its end.
    fn exhausted(&self) -> bool {
        self.end.as_ref().is_some_and(|end| {
            self.next.iter().zip(end).all(|(n, e)| n >= e)
                && self.pending.iter().all(Pending::is_empty)
        })
    }

    /// The partition whose pending messages should go out now, if any: one that filled a
    /// batch, reached the end of a bounded read, or waited for `linger`.
    fn ready(&self) -> Option<usize> {
        let full = self
            .pending
            .iter()
            .position(|p| p.messages.len() >= self.ctx.batch_size);
        let at_end = self.end.as_ref().and_then(|end| {
            self.pending
                .iter()
                .zip(end)
                .position(|(p, e)| !p.is_empty() && p.last + 1 >= *e)
        });
        // Each partition's messages wait at most `linger`, however busy the others are.
        let lingered = self
            .pending
            .iter()
            .position(|p| p.oldest.is_some_and(|t| t.elapsed() >= self.ctx.linger));
        full.or(at_end).or(lingered)
    }

    /// Decodes and hands out the pending messages of partition `i`.
    fn emit(&mut self, i: usize) -> Result<RecordBatch> {
        let pending = std::mem::take(&mut self.pending[i]);
        let source = format!("{}[{}]", self.topic, self.partitions[i]);
        let batch = self
            .decoder
            .decode(&pending.messages, &source, &self.ctx.bad_records)?;
        self.next[i] = pending.last + 1;
        self.split = Some(Split {
            index: i,
            count: self.partitions.len(),
        });
        let m = &self.ctx.metrics;
        m.records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        m.bytes
            .fetch_add(pending.messages.bytes() as u64, Ordering::Relaxed);
        Ok(batch)
    }

    /// Buffers one message of `partition`.
    fn accept(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        let Some(i) = self.partitions.iter().position(|p| *p == partition) else {
            return;
        };
        let end = self.end.as_ref().map(|e| e[i]);
        let binary = self.decoder.is_binary();
        self.pending[i].accept(offset, payload, self.next[i], end, binary);
    }

    /// Serves the consumer's own queue: statistics, commit results and client errors
    /// (a message there is buffered like any other). Returns the first error.
    fn serve_consumer_queue(&mut self) -> Option<KafkaError> {
        let consumer = Arc::clone(&self.consumer);
        loop {
            match consumer.poll(Duration::ZERO) {
                None => return None,
                Some(Ok(msg)) => {
                    let (partition, offset) = (msg.partition(), msg.offset());
                    self.accept(partition, offset, msg.payload());
                }
                // End-of-partition events belong to the partitions' own queues.
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Some(e),
            }
        }
    }

    /// Buffers what the partitions' queues hold, up to a batch per partition, without
    /// waiting. Returns how many messages there were, and the first error among them.
    fn take_fetched(&mut self) -> (usize, Option<KafkaError>) {
        let binary = self.decoder.is_binary();
        let mut taken = 0;
        let mut error = None;
        let (partitions, offsets) = (&self.partitions, &self.offsets);
        for (i, queue) in &mut self.queues {
            let i = *i;
            let (Some(pending), Some(&next)) = (self.pending.get_mut(i), self.next.get(i)) else {
                continue;
            };
            let end = self.end.as_ref().and_then(|e| e.get(i).copied());
            let room = self.ctx.batch_size.saturating_sub(pending.messages.len());
            taken += queue.drain(room, |fetched| match fetched {
                Fetched::Message { offset, payload } => {
                    pending.accept(offset, payload, next, end, binary)
                }
                Fetched::End { offset } => {
                    if let Some(end) = end {
                        pending.reached(offset, next, end);
                    }
                    // Read up to there: for the lag and the backlog, the partition is
                    // caught up, whatever markers lie below its high watermark.
                    if let (Some(p), Ok(mut known)) = (partitions.get(i), offsets.lock())
                        && let Some(k) = known.get_mut(p)
                    {
                        k.delivered = k.delivered.max(offset);
                    }
                }
                Fetched::Error(e) => {
                    error.get_or_insert(e);
                }
            });
        }
        (taken, error)
    }
}

/// librdkafka reconnects by itself; a broker that went away shows up here as transport
/// errors until it is back.
async fn consumer_error(topic: &str, e: &rdkafka::error::KafkaError, metrics: &ConnectorMetrics) {
    metrics.error();
    tracing::warn!(topic, error = %e, "kafka consumer error; retrying");
    tokio::time::sleep(ERROR_BACKOFF).await;
}

/// Runs a blocking client call off the async threads.
async fn blocking<T: Send + 'static>(
    consumer: &Arc<KafkaConsumer>,
    f: impl FnOnce(&KafkaConsumer) -> Result<T> + Send + 'static,
) -> Result<T> {
    let c = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .map_err(|e| Error::Internal(format!("a kafka lookup task failed: {e}")))?
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(i) = self.ready() {
                // Cancel-safe: a registry lookup only fills the decoder's cache.
                self.decoder.prepare(&self.pending[i].messages).await?;
                let batch = self.emit(i)?;
                if batch.num_rows() > 0 {
                    return Ok(Some(batch));
                }
                continue;
            }
            if self.exhausted() {
                return Ok(None);
            }
            if let Some(e) = self.serve_consumer_queue() {
                consumer_error(&self.topic, &e, &self.ctx.metrics).await;
                continue;
            }
            // Take what the client has fetched already, without waiting.
            let (taken, error) = self.take_fetched();
            if let Some(e) = error {
                consumer_error(&self.topic, &e, &self.ctx.metrics).await;
            }
            if taken > 0 {
                continue;
            }
            let wait = self
                .pending
                .iter()
                .filter_map(|p| p.oldest)
                .min()
                .map(|t| self.ctx.linger.saturating_sub(t.elapsed()))
                .unwrap_or(self.ctx.linger)
                .max(Duration::from_millis(1));
            // Woken by a queue turning non-empty; the timeout also serves the consumer's
            // queue (statistics, errors) at least every `linger`.
            let _ = tokio::time::timeout(wait, self.notify.notified()).await;
        }
    }

    fn position(&self) -> Option<serde_json::Value> {
        let next: BTreeMap<i32, i64> = self
            .partitions
            .iter()
            .copied()
            .zip(self.next.iter().copied())
            .collect();
        // Also tell the consumer group, for lag tools (best effort: checkpoints are what
        // recovery reads).
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &next {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(o));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(topic = %self.topic, error = %e, "kafka offset commit failed");
        }
        let end = self.end.as_ref().map(|e| {
            self.partitions
                .iter()
                .copied()
                .zip(e.iter().copied())
                .collect()
        });
        serde_json::to_value(KafkaPosition { next, end }).ok()
    }

    fn split(&self) -> Option<Split> {
        self.split
    }

    /// A partition has a backlog while messages wait in its buffer, or below its end
    /// (bounded), or below its high watermark by the last statistics (at most a second
    /// old), unless the client reported the partition's end there: what lies between the
    /// last message and a transactional topic's high watermark are commit markers, never
    /// delivered.
    fn split_has_backlog(&self, index: usize) -> bool {
        let (Some(pending), Some(&next)) = (self.pending.get(index), self.next.get(index)) else {
            return false;
        };
        if !pending.is_empty() {
            return true;
        }
        match &self.end {
            Some(end) => end.get(index).is_some_and(|&e| next < e),
            None => self.partitions.get(index).is_some_and(|p| {
                self.offsets
                    .lock()
                    .ok()
                    .and_then(|o| o.get(p).copied())
                    .is_some_and(|o| o.high > o.delivered.max(next))
            }),
        }
    }
}
