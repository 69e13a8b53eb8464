//! Windowed `GROUP BY` over `TUMBLE`, `HOP` and `CUMULATE`, emitting each window once when
//! the watermark passes its end.
//!
//! Rows are aggregated into panes: the largest interval every window of the kind is a
//! whole number of (the window itself for TUMBLE, gcd(slide, size) for HOP, the step for
//! CUMULATE). Each row updates exactly one pane's vectorised accumulators. A TUMBLE window
//! is its pane and is evaluated directly; a HOP or CUMULATE window merges the partial
//! states of its panes when it is emitted, so no row is aggregated once per window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::array::{Array, ArrayRef, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, sort_to_indices};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use sluice_planner::plan::{GroupColumn, WindowAggregate};
use sluice_planner::window::WindowKind;

use crate::error::{Error, Result};
use crate::message::Watermark;
use crate::operator::{Operator, Output};
use crate::operators::groups::{AggregateSet, GroupedState, PartialState};

/// One pane: live accumulators, and partial states frozen once the pane was complete.
#[derive(Debug, Default)]
struct Pane {
    live: Option<GroupedState>,
    frozen: Vec<PartialState>,
}

/// The windowed aggregate operator for TUMBLE, HOP and CUMULATE.
#[derive(Debug)]
pub struct WindowAggregateOperator {
    spec: WindowAggregate,
    set: AggregateSet,
    schema: SchemaRef,
    pane: i64,
    late_rows: Arc<AtomicU64>,
    /// Rows whose windows fall outside the timestamp range (bad records).
    bad_rows: Arc<AtomicU64>,
    panes: BTreeMap<i64, Pane>,
    watermark: Watermark,
}

impl WindowAggregateOperator {
    /// An operator reading `input` and producing `output`.
    ///
    /// # Errors
    /// For a SESSION window (see the session operator), a time column that is not a
    /// nanosecond timestamp, or aggregate results that do not match `output`.
    pub fn try_new(
        spec: WindowAggregate,
        input: &SchemaRef,
        output: SchemaRef,
        late_rows: Arc<AtomicU64>,
    ) -> Result<Self> {
        let pane = spec
            .kind
            .pane()
            .ok_or_else(|| Error::Internal("session windows use the session operator".into()))?;
        let set = aggregate_set(&spec, input, &output)?;
        Ok(Self {
            spec,
            set,
            schema: output,
            pane,
            late_rows,
            bad_rows: Arc::new(AtomicU64::new(0)),
            panes: BTreeMap::new(),
            watermark: i64::MIN,
        })
    }

    /// Counts rows whose windows cannot be represented into `bad_rows` (the pipeline's
    /// `bad_records`) instead of a counter of the operator's own.
    pub fn with_bad_rows(mut self, bad_rows: Arc<AtomicU64>) -> Self {
        self.bad_rows = bad_rows;
        self
    }

    /// Whether every window of a row at `t`, and every bound the operator computes for it,
    /// is a representable timestamp. Near the ends of the nanosecond range (years 1677 and
    /// 2262) a window can start before the first instant or end after the last; such a row
    /// is a bad record, never a window with `window_end < window_start`. For HOP the check
    /// is conservative by up to one window: a row less than `size` after the first instant
    /// is refused.
    fn bounds_fit(kind: WindowKind, t: i64) -> bool {
        let fits = || -> Option<()> {
            match kind {
                WindowKind::Tumble { size } => {
                    t.div_euclid(size).checked_mul(size)?.checked_add(size)?;
                }
                WindowKind::Hop { slide, size } => {
                    let last_start = t.div_euclid(slide).checked_mul(slide)?;
                    last_start.checked_add(size)?;
                    // The first window starts after t - size.
                    t.checked_sub(size)?;
                }
                WindowKind::Cumulate { step, size } => {
                    let base = t.div_euclid(size).checked_mul(size)?;
                    base.checked_add(size)?.checked_add(step)?;
                }
                WindowKind::Session { gap } => {
                    t.checked_add(gap)?;
                }
            }
            Some(())
        };
        fits().is_some()
    }

    /// The end of the last window a row at `t` belongs to; the row is late once the
    /// watermark reaches it. Saturates for a row whose windows do not fit
    /// ([`Self::bounds_fit`] drops those first).
    fn last_end(kind: WindowKind, t: i64) -> i64 {
        match kind {
            WindowKind::Tumble { size } | WindowKind::Cumulate { size, .. } => t
                .div_euclid(size)
                .saturating_mul(size)
                .saturating_add(size),
            WindowKind::Hop { slide, size } => {
                t.div_euclid(slide).saturating_mul(slide).saturating_add(size)
            }
            WindowKind::Session { gap } => t.saturating_add(gap),
        }
    }

    /// The windows `(end, start)` that contain the pane starting at `p`.
    fn windows_of_pane(&self, p: i64, out: &mut BTreeSet<(i64, i64)>, after: i64, upto: i64) {
        match self.spec.kind {
            WindowKind::Tumble { size } => {
                out.insert((p.saturating_add(size), p));
            }
            WindowKind::Hop { slide, size } => {
                let mut s = p.div_euclid(slide) * slide;
                while s.saturating_add(size) > p && s > i64::MIN {
                    let end = s.saturating_add(size);
                    if end > after && end <= upto {
                        out.insert((end, s));
                    }
                    s = s.saturating_sub(slide);
                }
            }
            WindowKind::Cumulate { step, size } => {
                let base = p.div_euclid(size) * size;
                let mut end = p.saturating_add(step);
                while end <= base.saturating_add(size) && end < i64::MAX {
                    if end > after && end <= upto {
                        out.insert((end, base));
                    }
                    end = end.saturating_add(step);
                }
            }
            WindowKind::Session { .. } => {}
        }
    }

    fn update_pane(
        &mut self,
        pane_start: i64,
        inputs: &crate::operators::groups::AggregateInputs,
    ) -> Result<()> {
        let pane = self.panes.entry(pane_start).or_default();
        if pane.live.is_none() {
            pane.live = Some(GroupedState::try_new(&self.set)?);
        }
        match pane.live.as_mut() {
            Some(state) => state.update(inputs),
            None => Err(Error::Internal("pane state vanished".into())),
        }
    }

    /// Drops rows all of whose windows were emitted, counting them, and rows without time.
    fn drop_late(
        &self,
        batch: RecordBatch,
        times: &TimestampNanosecondArray,
    ) -> Result<(RecordBatch, TimestampNanosecondArray)> {
        let kind = self.spec.kind;
        let watermark = self.watermark;
        let (mut late, mut bad) = (0u64, 0u64);
        let keep: BooleanArray = times
            .iter()
            .map(|t| {
                Some(match t {
                    None => false,
                    Some(t) if !Self::bounds_fit(kind, t) => {
                        bad += 1;
                        false
                    }
                    Some(t) if Self::last_end(kind, t) <= watermark => {
                        late += 1;
                        false
                    }
                    Some(_) => true,
                })
            })
            .collect();
        self.late_rows.fetch_add(late, Ordering::Relaxed);
        if bad > 0 {
            self.bad_rows.fetch_add(bad, Ordering::Relaxed);
            tracing::warn!(
                rows = bad,
                "rows whose windows fall outside the timestamp range (years 1677 to 2262) were dropped as bad records"
            );
        }
        let kept = filter_record_batch(&batch, &keep)?;
        let times = time_column(&kept, self.spec.time_index)?;
        Ok((kept, times))
    }

    fn emit_tumble(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        let WindowKind::Tumble { size } = self.spec.kind else {
            return Ok(());
        };
        while let Some(entry) = self.panes.first_entry() {
            let start = *entry.key();
            if start.saturating_add(size) > watermark {
                break;
            }
            let pane = entry.remove();
            // A tumbling window is its pane: it never has frozen parts.
            if let Some(state) = pane.live {
                let (keys, values) = state.finish()?;
                out.emit(window_batch(
                    &self.schema,
                    &self.spec.group_columns,
                    keys,
                    values,
                    start,
                    start.saturating_add(size),
                )?);
            }
        }
        Ok(())
    }

    fn emit_merged(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        let previous = self.watermark;
        // Freeze every pane that is complete, so windows can merge its partial state.
        for (&p, pane) in self.panes.range_mut(..) {
            if p.saturating_add(self.pane) > watermark {
                break;
            }
            if let Some(live) = pane.live.take() {
                pane.frozen.push(live.into_partial()?);
            }
        }
        let mut windows = BTreeSet::new();
        for &p in self.panes.keys() {
            if p >= watermark {
                break;
            }
            self.windows_of_pane(p, &mut windows, previous, watermark);
        }
        for (end, start) in windows {
            let mut merged = GroupedState::try_new(&self.set)?;
            for (_, pane) in self.panes.range(start..end) {
                for part in &pane.frozen {
                    merged.merge(part)?;
                }
            }
            if merged.num_groups() > 0 {
                let (keys, values) = merged.finish()?;
                out.emit(window_batch(
                    &self.schema,
                    &self.spec.group_columns,
                    keys,
                    values,
                    start,
                    end,
                )?);
            }
        }
        // Drop panes whose last window has been emitted.
        let kind = self.spec.kind;
        self.panes
            .retain(|&p, _| Self::last_end(kind, p) > watermark);
        Ok(())
    }
}

impl Operator for WindowAggregateOperator {
    fn name(&self) -> &'static str {
        "window_aggregate"
    }

    fn state_bytes(&self) -> usize {
        self.panes
            .values()
            .map(|p| {
                p.live.as_ref().map_or(0, GroupedState::size)
                    + p.frozen.iter().map(PartialState::size).sum::<usize>()
            })
            .sum()
    }

    fn process_batch(
        &mut self,
        _input: usize,
        batch: RecordBatch,
        _out: &mut Output,
    ) -> Result<()> {
        let times = time_column(&batch, self.spec.time_index)?;
        // Drop late rows (every window already emitted) and rows without event time.
        let kind = self.spec.kind;
        let watermark = self.watermark;
        let earliest = datafusion::arrow::compute::min(&times);
        let latest = datafusion::arrow::compute::max(&times);
        let all_on_time = times.null_count() == 0
            && earliest.is_none_or(|t| {
                Self::bounds_fit(kind, t) && Self::last_end(kind, t) > watermark
            })
            && latest.is_none_or(|t| Self::bounds_fit(kind, t));
        let (batch, times) = if all_on_time {
            (batch, times)
        } else {
            self.drop_late(batch, &times)?
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let inputs = self.set.evaluate(&self.spec.keys, &batch)?;
        let pane = self.pane;
        let values = times.values();
        let first = values[0].div_euclid(pane);
        if values.iter().all(|t| t.div_euclid(pane) == first) {
            return self.update_pane(first * pane, &inputs);
        }
        // Rows of several panes: sort row indices by pane and update each run.
        let panes: TimestampNanosecondArray = times.unary(|t| t.div_euclid(pane) * pane);
        let order = sort_to_indices(&panes, None, None)?;
        let mut run_start = 0usize;
        let idx = order.values();
        while run_start < idx.len() {
            let p = panes.value(idx[run_start] as usize);
            let mut run_end = run_start + 1;
            while run_end < idx.len() && panes.value(idx[run_end] as usize) == p {
                run_end += 1;
            }
            let take = UInt32Array::from(idx[run_start..run_end].to_vec());
            self.update_pane(p, &inputs.take(&take)?)?;
            run_start = run_end;
        }
        Ok(())
    }

    fn process_watermark(&mut self, watermark: Watermark, out: &mut Output) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        match self.spec.kind {
            WindowKind::Tumble { .. } => self.emit_tumble(watermark, out)?,
            _ => self.emit_merged(watermark, out)?,
        }
        self.watermark = watermark;
        Ok(())
    }

    /// Every pane's groups as partial states tagged with the pane's start, and the
    /// watermark. Restored, each pane holds all its parts as live state; a pane that was
    /// complete is frozen again at the next watermark, with the same result.
    fn snapshot(&mut self) -> Result<Option<RecordBatch>> {
        let mut parts = Vec::new();
        for (&p, pane) in self.panes.iter_mut() {
            if let Some(live) = pane.live.as_mut() {
                parts.push((p, live.checkpoint(&self.set)?));
            }
            parts.extend(pane.frozen.iter().map(|f| (p, f.clone())));
        }
        Ok(Some(self.set.state_batch(parts, self.watermark)?))
    }

    fn restore(&mut self, state: RecordBatch) -> Result<()> {
        let (watermark, parts) = self.set.parse_state_batch(&state)?;
        self.watermark = watermark;
        self.panes.clear();
        for (p, part) in parts {
            let pane = self.panes.entry(p).or_default();
            if pane.live.is_none() {
                pane.live = Some(GroupedState::try_new(&self.set)?);
            }
            if let Some(live) = pane.live.as_mut() {
                live.merge(&part)?;
            }
        }
        Ok(())
    }
}

/// The time column of a batch as nanosecond timestamps.
pub(crate) fn time_column(batch: &RecordBatch, index: usize) -> Result<TimestampNanosecondArray> {
    batch
        .column(index)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .cloned()
        .ok_or_else(|| {
            Error::Internal(format!(
                "window time column {index} is not a nanosecond timestamp"
            ))
        })
}

/// The [`AggregateSet`] of a windowed aggregate, checked against the output schema.
pub(crate) fn aggregate_set(
    spec: &WindowAggregate,
    input: &SchemaRef,
    output: &SchemaRef,
) -> Result<AggregateSet> {
    match input.fields().get(spec.time_index).map(|f| f.data_type()) {
        Some(DataType::Timestamp(TimeUnit::Nanosecond, _)) => {}
        other => {
            return Err(Error::Internal(format!(
                "window time column is {other:?}, expected a nanosecond timestamp"
            )));
        }
    }
    AggregateSet::try_new(
        &spec.keys,
        &spec.aggregates,
        &spec.filters,
        spec.group_columns.len(),
        input,
        output,
    )
}

/// Assembles the output batch of windows sharing one `[start, end)`: the group columns in
/// plan order, then the aggregates.
pub(crate) fn window_batch(
    schema: &SchemaRef,
    group_columns: &[GroupColumn],
    keys: Vec<ArrayRef>,
    values: Vec<ArrayRef>,
    start: i64,
    end: i64,
) -> Result<RecordBatch> {
    let rows = values
        .first()
        .map(|v| v.len())
        .or_else(|| keys.first().map(|k| k.len()))
        .unwrap_or(0);
    let starts: ArrayRef = Arc::new(TimestampNanosecondArray::from_value(start, rows));
    let ends: ArrayRef = Arc::new(TimestampNanosecondArray::from_value(end, rows));
    windows_batch(schema, group_columns, keys, values, starts, ends)
}

/// Assembles an output batch whose rows each carry their own window bounds (sessions).
pub(crate) fn windows_batch(
    schema: &SchemaRef,
    group_columns: &[GroupColumn],
    keys: Vec<ArrayRef>,
    values: Vec<ArrayRef>,
    starts: ArrayRef,
    ends: ArrayRef,
) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for g in group_columns {
        columns.push(match g {
            GroupColumn::Key(i) => Arc::clone(
                keys.get(*i)
                    .ok_or_else(|| Error::Internal("missing key column".into()))?,
            ),
            GroupColumn::WindowStart => Arc::clone(&starts),
            GroupColumn::WindowEnd => Arc::clone(&ends),
        });
    }
    columns.extend(values);
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::WindowAggregateOperator;
    use crate::operators::test_util::{Step, drive, window_spec};

    const NONE: Vec<String> = Vec::new();

    fn rows(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn tumble_emits_each_window_once_when_the_watermark_passes_its_end() {
        let (spec, input, output) =
            window_spec("SELECT k, window_start, window_end, count(*), sum(v) FROM TUMBLE(t, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end").await;
        let late = Arc::new(AtomicU64::new(0));
        let mut op =
            WindowAggregateOperator::try_new(spec, &input, output, Arc::clone(&late)).unwrap();
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&["1,5,1", "2,7,3", "1,1,12"]),
                Step::Watermark(9),
                Step::Batch(&["1,2,8"]),
                Step::Watermark(10),
                Step::Batch(&["1,100,9"]),
                Step::Watermark(i64::MAX / 1_000_000_000),
            ],
        );
        assert_eq!(out[0], NONE);
        assert_eq!(
            out[1], NONE,
            "window [0,10) is open until the watermark reaches 10"
        );
        assert_eq!(out[2], NONE);
        assert_eq!(out[3], rows(&["1,0,10,2,7", "2,0,10,1,7"]));
        assert_eq!(out[4], NONE, "a row for an emitted window is late");
        assert_eq!(out[5], rows(&["1,10,20,1,1"]));
        assert_eq!(late.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn hop_state_survives_a_checkpoint_and_restore() {
        use crate::operator::Operator;
        let sql = "SELECT k, window_start, window_end, count(*), avg(v) FROM HOP(t, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end";
        let before = [
            Step::Batch(&["1,1,2", "2,4,3", "1,10,7"]),
            Step::Watermark(6),
        ];
        let after = [
            Step::Batch(&["1,8,11", "2,2,14", "1,1,3", "1,1,-1"]),
            Step::Watermark(15),
            Step::Batch(&["1,5,30", "1,9,4"]),
            Step::Watermark(1000),
        ];
        // Uninterrupted.
        let (spec, input, output) = window_spec(sql).await;
        let late = Arc::new(AtomicU64::new(0));
        let mut whole = WindowAggregateOperator::try_new(
            spec.clone(),
            &input,
            Arc::clone(&output),
            Arc::clone(&late),
        )
        .unwrap();
        let mut expected = drive(&mut whole, &input, &before);
        expected.extend(drive(&mut whole, &input, &after));
        // Snapshot after `before`, restore into a fresh operator, go on.
        let restored_late = Arc::new(AtomicU64::new(0));
        let mut first =
            WindowAggregateOperator::try_new(spec.clone(), &input, Arc::clone(&output), late)
                .unwrap();
        let mut got = drive(&mut first, &input, &before);
        let state = first.snapshot().unwrap().unwrap();
        let mut second =
            WindowAggregateOperator::try_new(spec, &input, output, Arc::clone(&restored_late))
                .unwrap();
        second.restore(state).unwrap();
        got.extend(drive(&mut second, &input, &after));
        assert_eq!(got, expected);
        assert!(expected.iter().any(|o| !o.is_empty()));
        // The row at -1 s is late by the watermark of 6 s that came back with the state; the
        // row at 4 s is late at 15 s.
        assert_eq!(restored_late.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn hop_merges_panes_into_every_window_a_row_belongs_to() {
        let (spec, input, output) =
            window_spec("SELECT window_start, window_end, count(*), sum(v) FROM HOP(t, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY window_start, window_end").await;
        let late = Arc::new(AtomicU64::new(0));
        let mut op =
            WindowAggregateOperator::try_new(spec, &input, output, Arc::clone(&late)).unwrap();
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&["1,1,2", "1,10,7", "1,100,12"]),
                Step::Watermark(10),
                Step::Watermark(20),
            ],
        );
        // Windows [-5,5) and [0,10) close at 10; [5,15) and [10,20) at 20.
        assert_eq!(out[1], rows(&["-5,5,1,1", "0,10,2,11"]));
        assert_eq!(out[2], rows(&["10,20,1,100", "5,15,2,110"]));
        assert_eq!(late.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn hop_row_partly_late_joins_only_its_open_windows() {
        let (spec, input, output) =
            window_spec("SELECT window_start, count(*) FROM HOP(t, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY window_start").await;
        let late = Arc::new(AtomicU64::new(0));
        let mut op =
            WindowAggregateOperator::try_new(spec, &input, output, Arc::clone(&late)).unwrap();
        // At watermark 10, [0,10) is emitted; a row at 7 still belongs to the open [5,15).
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&["1,1,2"]),
                Step::Watermark(10),
                Step::Batch(&["1,1,7"]),
                Step::Watermark(15),
            ],
        );
        assert_eq!(out[1], rows(&["-5,1", "0,1"]));
        assert_eq!(out[3], rows(&["5,1"]));
        assert_eq!(late.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn windows_past_the_ends_of_the_timestamp_range_are_bad_rows() {
        let (spec, input, output) =
            window_spec("SELECT k, window_start, window_end, count(*) FROM TUMBLE(t, ts, INTERVAL '10' SECOND) GROUP BY k, window_start, window_end").await;
        let bad = Arc::new(AtomicU64::new(0));
        let mut op = WindowAggregateOperator::try_new(spec, &input, output, Arc::new(AtomicU64::new(0)))
            .unwrap()
            .with_bad_rows(Arc::clone(&bad));
        // i64 nanoseconds span -9223372036.85 s (1677) to 9223372036.85 s (2262).
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&[
                    "1,1,9223372020",
                    "1,1,9223372035",
                    "1,1,-9223372030",
                    "1,1,-9223372036",
                ]),
                Step::Watermark(9223372036),
            ],
        );
        assert_eq!(out[0], NONE);
        assert_eq!(
            out[1],
            rows(&["1,-9223372030,-9223372020,1", "1,9223372020,9223372030,1"])
        );
        assert_eq!(bad.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn hop_near_the_ends_of_the_range_puts_each_row_in_its_windows() {
        let (spec, input, output) =
            window_spec("SELECT window_start, window_end, count(*) FROM HOP(t, ts, INTERVAL '5' SECOND, INTERVAL '10' SECOND) GROUP BY window_start, window_end").await;
        let bad = Arc::new(AtomicU64::new(0));
        let mut op = WindowAggregateOperator::try_new(spec, &input, output, Arc::new(AtomicU64::new(0)))
            .unwrap()
            .with_bad_rows(Arc::clone(&bad));
        let out = drive(
            &mut op,
            &input,
            &[
                Step::Batch(&[
                    "1,1,9223372020",
                    "1,1,9223372030",
                    "1,1,-9223372020",
                    "1,1,-9223372030",
                ]),
                Step::Watermark(9223372036),
            ],
        );
        assert_eq!(
            out[1],
            rows(&[
                "-9223372020,-9223372010,1",
                "-9223372025,-9223372015,1",
                "9223372015,9223372025,1",
                "9223372020,9223372030,1",
            ])
        );
        assert_eq!(bad.load(Ordering::Relaxed), 2);
    }
}
