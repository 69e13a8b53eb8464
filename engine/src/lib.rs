//! Sluice's streaming runtime: operators over Arrow batches, bounded channels between
//! tasks, event-time watermarks, and the [`Session`] that runs statements.
#![warn(missing_docs)]

pub mod catalog_store;
pub mod checkpoint;
pub mod error;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod operators;
pub mod runtime;
pub mod session;
pub mod view;

pub use catalog_store::CatalogStore;
pub use error::{Error, ErrorKind, Result};
pub use metrics::{MetricsSnapshot, PipelineMetrics};
pub use runtime::{Pipeline, PipelineStatus};
pub use session::{Session, StatementOutput, execute_shared};
