//! The runtime: turns a [`sluice_planner::StreamPlan`] into tasks joined by bounded channels
//! and drives them. Consecutive single-input operators are chained into one task; sources
//! and sinks run in tasks of their own, so a slow sink back-pressures its sources.

mod chain;
mod pipeline;
mod sink_task;
mod source_task;
mod state_budget;

pub use pipeline::{
    Checkpointing, Pipeline, PipelineStatus, SinkTarget, SourceBinding, StopOnDrop,
    plan_fingerprint,
};

/// Messages a channel holds before its sender waits: the back-pressure window.
pub const CHANNEL_CAPACITY: usize = 8;
