//! `GROUP BY` without a window, for materialized views: keeps every group's accumulators and,
//! after each input batch, emits the current value of every group: a full snapshot that the
//! view keeps as the latest row per key.
//!
//! DataFusion's `GroupsAccumulator::evaluate` consumes the state, so a snapshot takes the
//! partial state once and merges it into two fresh accumulator sets: one to evaluate, one
//! to keep aggregating.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use sluice_planner::plan::UpdatingAggregate;

use crate::error::{Error, Result};
use crate::operator::{Operator, Output};
use crate::operators::groups::{AggregateSet, GroupedState};

/// The updating aggregate operator.
#[derive(Debug)]
pub struct UpdatingAggregateOperator {
    spec: UpdatingAggregate,
    set: AggregateSet,
    schema: SchemaRef,
    state: Option<GroupedState>,
}

impl UpdatingAggregateOperator {
    /// An operator reading `input` and producing `output` (the keys, then the aggregates).
    ///
    /// # Errors
    /// When the aggregates' types do not match `output`.
    pub fn try_new(spec: UpdatingAggregate, input: &SchemaRef, output: SchemaRef) -> Result<Self> {
        let set = AggregateSet::try_new(
            &spec.keys,
            &spec.aggregates,
            &spec.filters,
            spec.keys.len(),
            input,
            &output,
        )?;
        let state = Some(GroupedState::try_new(&set)?);
        Ok(Self {
            spec,
            set,
            schema: output,
            state,
        })
    }

    fn current(&mut self) -> Result<RecordBatch> {
        let current = self
            .state
            .take()
            .ok_or_else(|| Error::Internal("updating aggregate lost its state".into()))?;
        let partial = current.into_partial()?;
        let mut keep = GroupedState::try_new(&self.set)?;
        keep.merge(&partial)?;
        self.state = Some(keep);
        let mut view = GroupedState::try_new(&self.set)?;
        view.merge(&partial)?;
        let (keys, values): (Vec<ArrayRef>, Vec<ArrayRef>) = view.finish()?;
        let columns: Vec<ArrayRef> = keys.into_iter().chain(values).collect();
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }
}

impl Operator for UpdatingAggregateOperator {
    fn name(&self) -> &'static str {
        "updating_aggregate"
    }

    fn state_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, GroupedState::size)
    }

    fn process_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let inputs = self.set.evaluate(&self.spec.keys, &batch)?;
        match self.state.as_mut() {
            Some(state) => state.update(&inputs)?,
            None => return Err(Error::Internal("updating aggregate lost its state".into())),
        }
        out.emit(self.current()?);
        Ok(())
    }

    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let state = self
            .state
            .as_mut()
            .ok_or_else(|| Error::Internal("updating aggregate lost its state".into()))?;
        let partial = state.checkpoint(&self.set)?;
        Ok(Some(self.set.state_batch(vec![(0, partial)], i64::MIN)?))
    }

    fn restore(&mut self, state: RecordBatch) -> Result<()> {
        let (_, parts) = self.set.parse_state_batch(&state)?;
        let mut restored = GroupedState::try_new(&self.set)?;
        for (_, part) in parts {
            restored.merge(&part)?;
        }
        self.state = Some(restored);
        Ok(())
    }
}
