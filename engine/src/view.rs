//! Materialized view state (in memory, saved by checkpoints) and the sinks that feed it or
//! a caller.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_connectors::Sink;
use tokio::sync::mpsc;

/// The rows of an append-only materialized view. With a retention, rows older than it (by
/// when they were appended) are dropped.
#[derive(Debug)]
pub struct ViewStore {
    schema: SchemaRef,
    retention: Option<Duration>,
    /// Each write is a full snapshot that replaces the rows (an updating query).
    replace: bool,
    batches: Mutex<VecDeque<(Instant, RecordBatch)>>,
}

impl ViewStore {
    /// An empty view of `schema`, keeping rows for `retention` if given.
    pub fn new(schema: SchemaRef, retention: Option<Duration>) -> Self {
        Self {
            schema,
            retention,
            replace: false,
            batches: Mutex::new(VecDeque::new()),
        }
    }

    /// Makes every write replace the rows: for updating queries, whose output is a snapshot
    /// of every group, so the view holds the latest row per key.
    pub fn replacing(mut self, replace: bool) -> Self {
        self.replace = replace;
        self
    }

    fn expire(&self, batches: &mut VecDeque<(Instant, RecordBatch)>) {
        if let Some(keep) = self.retention {
            while batches.front().is_some_and(|(at, _)| at.elapsed() > keep) {
                batches.pop_front();
            }
        }
    }

    /// The view's schema.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    /// A snapshot of the current rows.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.batches
            .lock()
            .map(|mut b| {
                self.expire(&mut b);
                b.iter().map(|(_, batch)| batch.clone()).collect()
            })
            .unwrap_or_default()
    }

    /// Replaces the rows with `batches` (restored from a checkpoint).
    pub fn load(&self, batches: Vec<RecordBatch>) {
        if let Ok(mut b) = self.batches.lock() {
            let now = Instant::now();
            *b = batches.into_iter().map(|batch| (now, batch)).collect();
        }
    }

    /// Number of rows held.
    pub fn num_rows(&self) -> usize {
        self.batches
            .lock()
            .map(|mut b| {
                self.expire(&mut b);
                b.iter().map(|(_, batch)| batch.num_rows()).sum()
            })
            .unwrap_or(0)
    }
}

/// Appends a pipeline's output to a [`ViewStore`].
#[derive(Debug)]
pub struct ViewSink {
    store: Arc<ViewStore>,
}

impl ViewSink {
    /// A sink into `store`.
    pub fn new(store: Arc<ViewStore>) -> Self {
        Self { store }
    }
}

#[async_trait::async_trait]
impl Sink for ViewSink {
    async fn write(&mut self, batch: RecordBatch) -> sluice_connectors::Result<()> {
        let mut batches = self
            .store
            .batches
            .lock()
            .map_err(|_| sluice_connectors::Error::Internal("view lock poisoned".into()))?;
        if self.store.replace {
            batches.clear();
        }
        batches.push_back((Instant::now(), batch));
        self.store.expire(&mut batches);
        Ok(())
    }

    async fn finish(&mut self) -> sluice_connectors::Result<()> {
        Ok(())
    }

    /// The view's rows are its state: a checkpoint saves them and recovery loads them.
    async fn pre_commit(
        &mut self,
        _checkpoint: u64,
    ) -> sluice_connectors::Result<sluice_connectors::Precommit> {
        Ok(sluice_connectors::Precommit {
            state: self.store.snapshot(),
            ..sluice_connectors::Precommit::default()
        })
    }
}

/// Hands a pipeline's output to whoever runs the query (the CLI, a test).
#[derive(Debug)]
pub struct ChannelSink {
    tx: mpsc::Sender<RecordBatch>,
}

impl ChannelSink {
    /// A sink sending into `tx`.
    pub fn new(tx: mpsc::Sender<RecordBatch>) -> Self {
        Self { tx }
    }
}

#[async_trait::async_trait]
impl Sink for ChannelSink {
    async fn write(&mut self, batch: RecordBatch) -> sluice_connectors::Result<()> {
        // A reader that went away ends its interest, not the pipeline's health: whoever ran
        // the query stops the pipeline (the CLI on a closed stdout, Subscribe on disconnect).
        let _ = self.tx.send(batch).await;
        Ok(())
    }

    async fn finish(&mut self) -> sluice_connectors::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::batch;

    #[tokio::test]
    async fn retention_drops_rows_older_than_it() {
        let rows = batch("a:i64", &["1", "2"]);
        let short = Arc::new(ViewStore::new(
            rows.schema(),
            Some(Duration::from_millis(5)),
        ));
        let long = Arc::new(ViewStore::new(
            rows.schema(),
            Some(Duration::from_secs(3600)),
        ));
        ViewSink::new(Arc::clone(&short))
            .write(rows.clone())
            .await
            .unwrap();
        ViewSink::new(Arc::clone(&long)).write(rows).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(short.num_rows(), 0);
        assert!(short.snapshot().is_empty());
        assert_eq!(long.num_rows(), 2);
    }
}
