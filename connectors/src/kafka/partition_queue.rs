//! One partition's own message queue in librdkafka, read a batch at a time.
//!
//! By default librdkafka forwards every partition's fetched messages to the consumer's
//! queue, and the rdkafka crate takes them from there one event per call: a queue poll, two
//! clock reads and a reference-counted wrapper for every message. Here each partition's
//! queue is split off before the partitions are assigned (librdkafka then keeps it apart
//! even when assignment starts the fetch) and drained with `rd_kafka_consume_batch_queue`,
//! thousands of messages per call. The consumer's own queue still carries statistics,
//! commit results and client errors, and the source polls it as before.
//!
//! This is the crate's one module with `unsafe` code: the calls into librdkafka that the
//! rdkafka crate does not wrap.
#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// What a drained queue held: a message, or an error the client reported in its place.
pub(super) enum Fetched<'a> {
    /// A message at `offset`; no payload for a tombstone (a null value).
    Message {
        offset: i64,
        payload: Option<&'a [u8]>,
    },
    /// The client has read the partition up to `offset`, its end for now (with
    /// `enable.partition.eof`). Offsets below it that no message had are the control
    /// records of transactions, which the client never hands out.
    End { offset: i64 },
    /// A consumption error (a broker gone away, say); the client retries by itself.
    Error(KafkaError),
}

/// A partition's queue, split off the consumer's. Messages wake `notify` when the queue
/// turns non-empty.
pub(super) struct PartitionQueue<C: ConsumerContext + 'static> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// What the wake-up callback's argument points at; it must outlive the callback.
    _wake: Arc<Notify>,
    /// Room for the messages of one drain.
    taken: Vec<*mut rd::rd_kafka_message_t>,
    /// The queue belongs to this client, which must outlive it.
    _consumer: Arc<BaseConsumer<C>>,
}

// SAFETY: librdkafka's queues and messages may be used from any thread (its queue
// operations take the queue's lock); the raw pointers are only touched through `&mut self`.
unsafe impl<C: ConsumerContext + 'static> Send for PartitionQueue<C> {}

/// Called by librdkafka, from its own threads, when a queue turns non-empty.
unsafe extern "C" fn wake_up(_rk: *mut rd::rd_kafka_t, opaque: *mut c_void) {
    // SAFETY: `opaque` points at the `Notify` a live `PartitionQueue` holds an `Arc` of: the
    // callback is disabled in `Drop` before that `Arc` is released.
    let notify = unsafe { &*(opaque as *const Notify) };
    notify.notify_one();
}

impl<C: ConsumerContext + 'static> PartitionQueue<C> {
    /// Splits the queue of `topic`'s `partition` off the consumer's queue. Call it before
    /// the partition is assigned, so that no message reaches the consumer's queue first.
    ///
    /// # Errors
    /// When librdkafka has no queue for the partition.
    pub(super) fn split(
        consumer: &Arc<BaseConsumer<C>>,
        topic: &str,
        partition: i32,
        notify: &Arc<Notify>,
    ) -> Result<Self> {
        let name = CString::new(topic)
            .map_err(|_| Error::Input(format!("kafka topic '{topic}' holds a NUL byte")))?;
        // SAFETY: the client pointer is live while `consumer` is; librdkafka copies the name.
        let raw = unsafe {
            rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                name.as_ptr(),
                partition,
            )
        };
        let queue = NonNull::new(raw).ok_or_else(|| {
            Error::service(
                "kafka",
                format!("librdkafka has no queue for partition {topic}[{partition}]"),
            )
        })?;
        let wake = Arc::clone(notify);
        // SAFETY: `queue` is the live queue just obtained. Forwarding it to nothing marks it
        // as the application's, so that starting the fetch does not forward it again. The
        // callback's argument is the `Notify` behind `wake`, released only after `Drop`
        // disables it.
        unsafe {
            rd::rd_kafka_queue_forward(queue.as_ptr(), ptr::null_mut());
            rd::rd_kafka_queue_cb_event_enable(
                queue.as_ptr(),
                Some(wake_up),
                Arc::as_ptr(&wake) as *mut c_void,
            );
        }
        Ok(Self {
            queue,
            _wake: wake,
            taken: Vec::new(),
            _consumer: Arc::clone(consumer),
        })
    }

    /// Hands each message waiting in the queue, up to `max`, to `f`, without blocking, and
    /// destroys them. Returns how many there were.
    pub(super) fn drain(&mut self, max: usize, mut f: impl FnMut(Fetched<'_>)) -> usize {
        if max == 0 {
            return 0;
        }
        self.taken.resize(max, ptr::null_mut());
        // SAFETY: `taken` has room for `max` pointers, which librdkafka fills in order; the
        // queue is live.
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(self.queue.as_ptr(), 0, self.taken.as_mut_ptr(), max)
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        self.taken.truncate(n);
        for &m in &self.taken {
            // SAFETY: librdkafka returned `n` valid messages, each live until destroyed in
            // `release`; the payload is `len` bytes (or null when empty).
            let m = unsafe { &*m };
            if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF {
                f(Fetched::End { offset: m.offset });
                continue;
            }
            if m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                f(Fetched::Error(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::from(m.err),
                )));
                continue;
            }
            let payload = if m.payload.is_null() {
                None
            } else if m.len == 0 {
                Some(&[][..])
            } else {
                // SAFETY: as above: `payload` points at `len` bytes owned by the message.
                Some(unsafe { std::slice::from_raw_parts(m.payload as *const u8, m.len) })
            };
            f(Fetched::Message {
                offset: m.offset,
                payload,
            });
        }
        self.release();
        n
    }

    /// Destroys the messages taken.
    fn release(&mut self) {
        for m in self.taken.drain(..) {
            // SAFETY: each pointer is a message librdkafka handed out and nobody destroyed.
            unsafe { rd::rd_kafka_message_destroy(m) };
        }
    }
}

impl<C: ConsumerContext + 'static> Drop for PartitionQueue<C> {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the queue is live. librdkafka calls the callback with the queue locked and
        // disabling it takes that lock, so once it returns no call is running and `_wake`
        // (freed after this) is no longer used. Destroying our handle leaves the partition's
        // queue to librdkafka.
        unsafe {
            rd::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, ptr::null_mut());
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}
