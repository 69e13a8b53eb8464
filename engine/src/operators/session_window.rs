//! Windowed `GROUP BY` over `SESSION(rel, col, gap)`: per group key, rows closer than `gap`
//! share a window that runs from the first row's time to the last row's time plus `gap`.
//!
//! Rows wait in a buffer until the watermark closes their session (the session's end is at
//! or before the watermark: no later row can join it). On each watermark the buffer is
//! sorted by key and time with arrow kernels, sessions are cut where the gap is reached,
//! closed sessions are aggregated with vectorised accumulators (one group per session) and
//! emitted, and the rows of open sessions stay buffered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take, take_record_batch,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use sluice_planner::plan::WindowAggregate;
use sluice_planner::window::WindowKind;

use crate::error::{Error, Result};
use crate::message::Watermark;
use crate::operator::{Operator, Output};
use crate::operators::groups::{AggregateInputs, AggregateSet, WATERMARK_KEY, state_watermark};
use crate::operators::window_aggregate::{aggregate_set, time_column, windows_batch};

/// The session window operator.
#[derive(Debug)]
pub struct SessionWindowOperator {
    spec: WindowAggregate,
    set: AggregateSet,
    schema: SchemaRef,
    gap: i64,
    late_rows: Arc<AtomicU64>,
    /// Buffered input rows of sessions not yet closed.
    buffer: Vec<RecordBatch>,
    input_schema: SchemaRef,
    /// The earliest event time in the buffer: no session closes before it plus the gap.
    earliest: i64,
    watermark: Watermark,
}

impl SessionWindowOperator {
    /// A session operator reading `input` and producing `output`.
    ///
    /// # Errors
    /// When the spec is not a session window or does not match the schemas.
    pub fn try_new(
        spec: WindowAggregate,
        input: &SchemaRef,
        output: SchemaRef,
        late_rows: Arc<AtomicU64>,
    ) -> Result<Self> {
        let WindowKind::Session { gap } = spec.kind else {
            return Err(Error::Internal(
                "the session operator runs SESSION windows only".into(),
            ));
        };
        let set = aggregate_set(&spec, input, &output)?;
        Ok(Self {
            spec,
            set,
            schema: output,
            gap,
            late_rows,
            buffer: Vec::new(),
            input_schema: Arc::clone(input),
            earliest: i64::MAX,
            watermark: i64::MIN,
        })
    }

    /// Cuts the buffered rows into sessions and emits those the watermark closed.
    fn emit_closed(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let all = concat_batches(&self.input_schema, &self.buffer)?;
        self.buffer.clear();
        let inputs = self.set.evaluate(&self.spec.keys, &all)?;
        let times = time_column(&all, self.spec.time_index)?;
        // Sort by key, then time.
        let mut sort: Vec<SortColumn> = inputs
            .keys
            .iter()
            .map(|k| SortColumn {
                values: Arc::clone(k),
                options: None,
            })
            .collect();
        sort.push(SortColumn {
            values: Arc::new(times.clone()) as ArrayRef,
            options: None,
        });
        let order = lexsort_to_indices(&sort, None)?;
        let sorted_times = take(&times, &order, None)?;
        let sorted_times = sorted_times
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .ok_or_else(|| Error::Internal("sorted times changed type".into()))?;
        let sorted_keys: Vec<ArrayRef> = inputs
            .keys
            .iter()
            .map(|k| take(k.as_ref(), &order, None))
            .collect::<std::result::Result<_, _>>()?;
        let rows = if sorted_keys.is_empty() {
            None
        } else {
            let converter = RowConverter::new(
                sorted_keys
                    .iter()
                    .map(|k| SortField::new(k.data_type().clone()))
                    .collect(),
            )?;
            Some(converter.convert_columns(&sorted_keys)?)
        };
        // Walk the sorted rows once, cutting sessions.
        let n = sorted_times.len();
        let mut session_of_row: Vec<u32> = Vec::with_capacity(n);
        let mut sessions: Vec<(i64, i64, u32)> = Vec::new(); // (start, last time, first sorted row)
        for i in 0..n {
            let t = sorted_times.value(i);
            let same_key = i > 0 && rows.as_ref().is_none_or(|r| r.row(i) == r.row(i - 1));
            let joins = same_key
                && sessions
                    .last()
                    .is_some_and(|&(_, last, _)| t < last.saturating_add(self.gap));
            if joins {
                if let Some(s) = sessions.last_mut() {
                    s.1 = s.1.max(t);
                }
            } else {
                sessions.push((t, t, i as u32));
            }
            session_of_row.push((sessions.len() - 1) as u32);
        }
        let closed: Vec<bool> = sessions
            .iter()
            .map(|&(_, last, _)| last.saturating_add(self.gap) <= watermark)
            .collect();
        // Closed sessions get dense group ids in session order; open rows go back to the buffer.
        let mut group_of_session = vec![u32::MAX; sessions.len()];
        let mut next = 0u32;
        for (s, &c) in closed.iter().enumerate() {
            if c {
                group_of_session[s] = next;
                next += 1;
            }
        }
        let mut closed_rows = Vec::new();
        let mut closed_groups = Vec::new();
        let mut open_rows = Vec::new();
        for (i, &s) in session_of_row.iter().enumerate() {
            let original = order.value(i);
            if closed[s as usize] {
                closed_rows.push(original);
                closed_groups.push(group_of_session[s as usize] as usize);
            } else {
                open_rows.push(original);
            }
        }
        self.earliest = i64::MAX;
        if !open_rows.is_empty() {
            let open = take_record_batch(&all, &UInt32Array::from(open_rows))?;
            self.earliest =
                datafusion::arrow::compute::min(&time_column(&open, self.spec.time_index)?)
                    .unwrap_or(i64::MIN);
            self.buffer.push(open);
        }
        if next == 0 {
            return Ok(());
        }
        let closed_inputs = inputs.take(&UInt32Array::from(closed_rows))?;
        let values = aggregate_sessions(&self.set, &closed_inputs, &closed_groups, next as usize)?;
        // Keys, starts and ends of the closed sessions, in group order.
        let firsts: Vec<u32> = sessions
            .iter()
            .zip(&closed)
            .filter(|(_, c)| **c)
            .map(|(s, _)| s.2)
            .collect();
        let firsts = UInt32Array::from(firsts);
        let keys: Vec<ArrayRef> = sorted_keys
            .iter()
            .map(|k| take(k.as_ref(), &firsts, None))
            .collect::<std::result::Result<_, _>>()?;
        let bounds: Vec<(i64, i64)> = sessions
            .iter()
            .zip(&closed)
            .filter(|(_, c)| **c)
            .map(|(s, _)| (s.0, s.1 + self.gap))
            .collect();
        // Sessions have their own bounds, so each is assembled with the shared helper and
        // its window columns are then replaced by the per-session bounds.
        let starts: ArrayRef = Arc::new(TimestampNanosecondArray::from(
            bounds.iter().map(|b| b.0).collect::<Vec<_>>(),
        ));
        let ends: ArrayRef = Arc::new(TimestampNanosecondArray::from(
            bounds.iter().map(|b| b.1).collect::<Vec<_>>(),
        ));
        out.emit(windows_batch(
            &self.schema,
            &self.spec.group_columns,
            keys,
            values,
            starts,
            ends,
        )?);
        Ok(())
    }
}

/// Aggregates rows already assigned to dense group ids.
fn aggregate_sessions(
    set: &AggregateSet,
    inputs: &AggregateInputs,
    groups: &[usize],
    total: usize,
) -> Result<Vec<ArrayRef>> {
    let mut accs = set.accumulators()?;
    for ((acc, args), filter) in accs.iter_mut().zip(&inputs.args).zip(&inputs.filters) {
        acc.update_batch(args, groups, filter.as_ref(), total)?;
    }
    accs.iter_mut()
        .map(|a| Ok(a.evaluate(datafusion::logical_expr::EmitTo::All)?))
        .collect()
}

impl Operator for SessionWindowOperator {
    fn name(&self) -> &'static str {
        "session_window"
    }

    fn state_bytes(&self) -> usize {
        self.buffer.iter().map(RecordBatch::get_array_memory_size).sum()
    }

    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        let times = time_column(&batch, self.spec.time_index)?;
        let watermark = self.watermark;
        let gap = self.gap;
        // A row whose own session would already be closed is late.
        let keep: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| t.saturating_add(gap) > watermark)))
            .collect();
        let late = times
            .iter()
            .filter(|t| t.is_some_and(|t| t.saturating_add(gap) <= watermark))
            .count();
        if late > 0 {
            self.late_rows.fetch_add(late as u64, Ordering::Relaxed);
        }
        let batch = if keep.true_count() == batch.num_rows() {
            batch
        } else {
            filter_record_batch(&batch, &keep)?
        };
        if batch.num_rows() > 0 {
            let times = time_column(&batch, self.spec.time_index)?;
            self.earliest = self
                .earliest
                .min(datafusion::arrow::compute::min(&times).unwrap_or(i64::MIN));
            self.buffer.push(batch);
        }
        Ok(())
    }

    fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        if self.earliest.saturating_add(self.gap) <= watermark {
            self.emit_closed(watermark, out)?;
        }
        self.watermark = watermark;
        Ok(())
    }

    /// The buffered rows of open sessions, with the watermark in the metadata.
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let rows = concat_batches(&self.input_schema, &self.buffer)?;
        self.buffer = vec![rows.clone()];
        let metadata = [(WATERMARK_KEY.to_string(), self.watermark.to_string())].into();
        let schema = Arc::new(self.input_schema.as_ref().clone().with_metadata(metadata));
        Ok(Some(RecordBatch::try_new(schema, rows.columns().to_vec())?))
    }

    fn restore(&mut self, state: RecordBatch) -> Result<()> {
        self.watermark = state_watermark(&state)?;
        let rows = RecordBatch::try_new(Arc::clone(&self.input_schema), state.columns().to_vec())
            .map_err(|e| {
            Error::IncompatibleState(format!(
                "checkpointed session rows do not match the query's input: {e}"
            ))
        })?;
        let times = time_column(&rows, self.spec.time_index)?;
        self.earliest = datafusion::arrow::compute::min(&times).unwrap_or(i64::MAX);
        self.buffer = if rows.num_rows() > 0 {
            vec![rows]
        } else {
            Vec::new()
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::SessionWindowOperator;
    use crate::operators::test_util::{Step, drive, window_spec};

    #[tokio::test]
    async fn a_row_that_bridges_two_sessions_merges_them() {
        let (spec, input, output) =
            window_spec("SELECT k, window_start, window_end, count(*), sum(v) FROM SESSION(t, ts, INTERVAL '5' SECOND) GROUP BY k, window_start, window_end").await;
        let mut op =
            SessionWindowOperator::try_new(spec, &input, output, Arc::new(AtomicU64::new(0)))
                .unwrap();
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&["1,1,1", "1,10,8", "2,3,2"]),
                Step::Watermark(5),
                Step::Batch(&["1,100,4"]),
                Step::Watermark(30),
            ],
        );
        assert_eq!(out[1], Vec::<String>::new(), "no session has ended by 5");
        // Key 1's rows at 1 and 8 are bridged by the row at 4 (4 < 1 + 5 and 8 < 4 + 5).
        assert_eq!(
            out[3],
            vec!["1,1,13,3,111".to_string(), "2,2,7,1,3".to_string()]
        );
    }

    #[tokio::test]
    async fn a_session_closed_by_the_watermark_is_emitted_and_later_rows_start_anew() {
        let (spec, input, output) =
            window_spec("SELECT k, window_start, window_end, count(*) FROM SESSION(t, ts, INTERVAL '5' SECOND) GROUP BY k, window_start, window_end").await;
        let late = Arc::new(AtomicU64::new(0));
        let mut op =
            SessionWindowOperator::try_new(spec, &input, output, Arc::clone(&late)).unwrap();
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&["1,1,1", "1,1,10"]),
                Step::Watermark(7),
                Step::Batch(&["1,1,6", "1,1,1"]),
                Step::Watermark(30),
            ],
        );
        // [1,6) ended at 6 <= 7 and is emitted once; the row at 6 (its own session would end
        // at 11 > 7) is on time and joins 10 (10 < 6 + 5); the second row at 1 is late.
        assert_eq!(out[1], vec!["1,1,6,1".to_string()]);
        assert_eq!(out[3], vec!["1,6,15,2".to_string()]);
        assert_eq!(late.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
