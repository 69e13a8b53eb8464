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

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::message::{MessageBatcher, MessageFormat};
use crate::options::Options;
use crate::source::{Source, SourceConfig, SourceContext};

const CONNECTOR: &str = "webhook";
/// Request bodies an inbox holds before senders wait.
const INBOX_CAPACITY: usize = 64;

/// The inboxes of the running sources of one name: each source's id and its sender.
type Inboxes = Vec<(u64, mpsc::Sender<Bytes>)>;

/// The inboxes of running webhook sources, by source name.
#[derive(Debug, Default)]
pub struct Hub {
    inboxes: Mutex<HashMap<String, Inboxes>>,
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
        if format.is_binary() {
            return Err(Error::option(
                CONNECTOR,
                "a webhook takes text records, one per line: format json, csv or raw",
            ));
        }
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
            batcher: MessageBatcher::new(
                self.format.decoder(&self.schema)?,
                format!("webhook:{}", ctx.name),
            ),
            ctx,
        }))
    }
}

/// A running `webhook` source.
struct WebhookSource {
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    batcher: MessageBatcher,
    ctx: SourceContext,
}

impl Drop for WebhookSource {
    fn drop(&mut self) {
        hub().unregister(&self.ctx.name, self.id);
    }
}

#[async_trait::async_trait]
impl Source for WebhookSource {
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.batcher
            .next_from(&mut self.rx, &self.ctx, true, || {
                Error::Internal("the webhook inbox closed".into())
            })
            .await
    }
}
