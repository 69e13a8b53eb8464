//! The `webhook` source: rows POSTed as JSON lines (or CSV, raw) to the server's HTTP port
//! at `/ingest/<source name>`.
//!
//! Each running pipeline that reads the source registers an inbox in the process-wide
//! [`hub`] under the source's name; the HTTP handler hands a request body to every inbox
//! and answers 200 only once each accepted it (a full inbox makes the request wait: that
//! is the back-pressure). Bodies are split into records and decoded by the source, with bad
//! records handled as for any source. What was accepted but not yet covered by a
//! checkpoint is not replayed after a crash: the sender must send it again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::format::message::{MessageBuffer, MessageDecoder, MessageFormat};
use crate::options::Options;
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "webhook";
/// Request bodies an inbox holds before senders wait.
const INBOX_CAPACITY: usize = 64;

/// The inboxes of running webhook sources, by source name.
#[derive(Debug, Default)]
pub struct Hub {
    inboxes: Mutex<HashMap<String, Vec<(u64, mpsc::Sender<Bytes>)>>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// Why a body was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum IngestError {
    /// No running pipeline reads a webhook source of that name.
    NoSuchSource,
    /// The pipeline stopped while the body was being handed over.
    Stopped,
}

impl Hub {
    fn register(&self, name: &str) -> (u64, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(INBOX_CAPACITY);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut inboxes) = self.inboxes.lock() {
            inboxes
                .entry(name.to_ascii_lowercase())
                .or_default()
                .push((id, tx));
        }
        (id, rx)
    }

    fn unregister(&self, name: &str, id: u64) {
        if let Ok(mut inboxes) = self.inboxes.lock() {
            let key = name.to_ascii_lowercase();
            if let Some(list) = inboxes.get_mut(&key) {
                list.retain(|(i, _)| *i != id);
                if list.is_empty() {
                    inboxes.remove(&key);
                }
            }
        }
    }

    /// Hands `body` to every running pipeline reading source `name`, waiting while their
    /// inboxes are full. Returns how many pipelines accepted it.
    ///
    /// # Errors
    /// No pipeline reads the source, or one stopped meanwhile.
    pub async fn ingest(&self, name: &str, body: Bytes) -> Result<usize, IngestError> {
        let senders: Vec<mpsc::Sender<Bytes>> = self
            .inboxes
            .lock()
            .ok()
            .and_then(|i| i.get(&name.to_ascii_lowercase()).cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(_, tx)| tx)
            .collect();
        if senders.is_empty() {
            return Err(IngestError::NoSuchSource);
        }
        for tx in &senders {
            tx.send(body.clone())
                .await
                .map_err(|_| IngestError::Stopped)?;
        }
        Ok(senders.len())
    }
}

/// The process-wide hub the HTTP server hands request bodies to.
pub fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(Hub::default)
}

/// A validated `webhook` source.
#[derive(Debug, Clone)]
pub struct WebhookSourceConfig {
    format: MessageFormat,
    schema: SchemaRef,
}

impl WebhookSourceConfig {
    /// Validates the options of a `webhook` source with its declared columns.
    ///
    /// # Errors
    /// An [`Error::Option`] naming an unknown or ill-typed option.
    pub fn try_new(mut options: Options, declared: Option<SchemaRef>) -> Result<Self> {
        let format = MessageFormat::from_options(CONNECTOR, &mut options)?;
        let schema = format.schema(CONNECTOR, declared)?;
        format.decoder(&schema)?;
        options.finish()?;
        Ok(Self { format, schema })
    }
}

#[async_trait::async_trait]
impl SourceConfig for WebhookSourceConfig {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn is_bounded(&self) -> bool {
        false
    }

    async fn open(&self, ctx: SourceContext) -> Result<Box<dyn Source>> {
        let (id, rx) = hub().register(&ctx.name);
        Ok(Box::new(WebhookSource {
            id,
            rx,
            decoder: self.format.decoder(&self.schema)?,
            pending: MessageBuffer::default(),
            oldest: None,
            received: 0,
            ctx,
        }))
    }
}

/// A running `webhook` source.
struct WebhookSource {
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    decoder: MessageDecoder,
    pending: MessageBuffer,
    oldest: Option<Instant>,
    received: u64,
    ctx: SourceContext,
}

impl Drop for WebhookSource {
    fn drop(&mut self) {
        hub().unregister(&self.ctx.name, self.id);
    }
}

impl WebhookSource {
    fn accept(&mut self, body: &[u8]) {
        for line in body.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if !line.iter().all(u8::is_ascii_whitespace) {
                self.pending.push(line);
            }
        }
        if !self.pending.is_empty() {
            self.oldest.get_or_insert_with(Instant::now);
        }
    }

    fn emit(&mut self) -> Result<RecordBatch> {
        let messages = std::mem::take(&mut self.pending);
        self.oldest = None;
        let first = self.received + 1;
        self.received += messages.len() as u64;
        let source = format!("webhook:{}", self.ctx.name);
        let batch = self
            .decoder
            .decode(&messages, &source, first, &self.ctx.bad_records)?;
        let m = &self.ctx.metrics;
        m.records
            .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
        m.bytes
            .fetch_add(messages.bytes() as u64, Ordering::Relaxed);
        Ok(batch)
    }
}

#[async_trait::async_trait]
impl Source for WebhookSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let lingered = self.oldest.is_some_and(|t| t.elapsed() >= self.ctx.linger);
            if self.pending.len() >= self.ctx.batch_size || (lingered && !self.pending.is_empty()) {
                let batch = self.emit()?;
                if batch.num_rows() > 0 {
                    return Ok(Some(batch));
                }
                continue;
            }
            while let Ok(body) = self.rx.try_recv() {
                self.accept(&body);
            }
            if self.pending.len() >= self.ctx.batch_size {
                continue;
            }
            let wait = self
                .oldest
                .map(|t| self.ctx.linger.saturating_sub(t.elapsed()))
                .unwrap_or(self.ctx.linger)
                .max(Duration::from_millis(1));
            match tokio::time::timeout(wait, self.rx.recv()).await {
                Ok(Some(body)) => self.accept(&body),
                Ok(None) => return Err(Error::Internal("the webhook inbox closed".into())),
                Err(_) => {}
            }
        }
    }
}
