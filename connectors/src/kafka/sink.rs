//! The running `kafka` sink: one message per row, keyed by the `key` columns if given,
//! sent without waiting and confirmed in bulk. Every checkpoint (and the end) waits until
//! the broker acknowledged every message sent before it, so nothing a checkpoint covers is
//! lost: at-least-once. With `delivery_guarantee = 'exactly_once'` the messages of each
//! checkpoint also form one Kafka transaction, committed when the checkpoint is stored
//! (see [`super::transaction`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use super::transaction::Transactions;
use super::{CONNECTOR, Delivery, KafkaSinkConfig, kafka_error};
use crate::error::{Error, Result};
use crate::format::message::{MessageEncoder, encode_keys};
use crate::metrics::ConnectorMetrics;
use crate::sink::{Precommit, Sink, SinkContext};

/// Messages in flight before the sink waits for acknowledgements.
const MAX_IN_FLIGHT: usize = 100_000;

/// A running `kafka` sink.
pub(super) struct KafkaSink {
    producer: FutureProducer,
    topic: String,
    encoder: MessageEncoder,
    key_columns: Vec<usize>,
    in_flight: Vec<DeliveryFuture>,
    metrics: Arc<ConnectorMetrics>,
    /// With exactly-once delivery: the open transaction and those staged for commit.
    transactions: Option<Transactions>,
}

impl KafkaSink {
    /// A sink for batches of `schema`.
    ///
    /// # Errors
    /// When a `key` column is not in `schema`, the producer cannot be created, the
    /// columns cannot be written in the format, or exactly-once delivery is asked for
    /// without checkpoints or from a broker without transactions.
    pub(super) async fn try_new(
        config: &KafkaSinkConfig,
        schema: &SchemaRef,
        ctx: SinkContext,
    ) -> Result<Self> {
        let key_columns = config
            .key
            .iter()
            .map(|k| {
                schema
                    .fields()
                    .iter()
                    .position(|f| f.name().eq_ignore_ascii_case(k))
                    .ok_or_else(|| {
                        Error::option(
                            CONNECTOR,
                            format!("key column '{k}' is not in the sink's input"),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let topic = config.connection.topic.clone();
        let (producer, transactions) = match config.delivery {
            Delivery::AtLeastOnce => (
                config.producer_config().create().map_err(kafka_error)?,
                None,
            ),
            Delivery::ExactlyOnce => {
                let run = ctx.checkpoints.ok_or_else(|| {
                    Error::option(
                        CONNECTOR,
                        "delivery_guarantee = 'exactly_once' commits a transaction with each checkpoint, and checkpoints are off",
                    )
                })?;
                config.check_transaction_timeout(run.interval)?;
                let prefix = config
                    .transactional_id_prefix
                    .clone()
                    .unwrap_or_else(|| format!("sluice-{}", ctx.name));
                let (t, producer) = Transactions::start(
                    config.producer_config(),
                    &config.connection.client_config(&[]),
                    prefix,
                    topic.clone(),
                    config.staged.clone(),
                    run,
                )
                .await?;
                (producer, Some(t))
            }
        };
        Ok(Self {
            producer,
            encoder: MessageEncoder::try_new(&config.format, schema, &topic).await?,
            topic,
            key_columns,
            in_flight: Vec::new(),
            metrics: ctx.metrics,
            transactions,
        })
    }

    /// Waits until the broker acknowledged every message sent so far.
    async fn confirm(&mut self) -> Result<()> {
        for delivery in self.in_flight.drain(..) {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(kafka_error(e)),
                Err(_) => {
                    return Err(Error::service(
                        CONNECTOR,
                        "the producer dropped a message before the broker acknowledged it",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let rows = self.encoder.encode(&batch)?;
        let keys = encode_keys(&batch, &self.key_columns)?;
        let mut bytes = 0u64;
        for (i, payload) in rows.iter().enumerate() {
            bytes += payload.len() as u64;
            loop {
                let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic).payload(payload);
                if let Some(k) = keys.as_ref().and_then(|k| k.get(i)) {
                    record = record.key(k);
                }
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        self.in_flight.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // The client's queue is full: wait for what is in flight.
                        self.confirm().await?;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(kafka_error(e)),
                }
            }
            if self.in_flight.len() >= MAX_IN_FLIGHT {
                self.confirm().await?;
            }
        }
        self.metrics
            .records
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.confirm().await?;
        if let Some(t) = &mut self.transactions {
            return t.abort_open(&self.producer).await;
        }
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| Error::Internal(format!("kafka flush task failed: {e}")))?
            .map_err(kafka_error)
    }

    async fn pre_commit(&mut self, checkpoint: u64) -> Result<Precommit> {
        self.confirm().await?;
        let Some(t) = &mut self.transactions else {
            return Ok(Precommit::default());
        };
        let pending = t.stage(&mut self.producer, checkpoint).await?;
        Ok(Precommit {
            pending: Some(pending),
            pinned: true,
            ..Precommit::default()
        })
    }
}

impl Drop for KafkaSink {
    /// A sink dropped with its transaction open (its pipeline failed) aborts it, so that
    /// `read_committed` consumers are not held back until the broker times it out. Best
    /// effort, on a thread of its own: the call waits for the broker.
    fn drop(&mut self) {
        if self
            .transactions
            .as_ref()
            .is_some_and(Transactions::is_open)
        {
            let producer = self.producer.clone();
            let aborted = std::thread::Builder::new()
                .name("kafka-abort".into())
                .spawn(move || producer.abort_transaction(Duration::from_secs(10)));
            if let Err(e) = aborted {
                tracing::debug!(connector = CONNECTOR, error = %e, "cannot abort the open transaction");
            }
        }
    }
}
