//! Grouped aggregation state shared by the window operators: DataFusion's vectorised
//! `GroupValues` to intern keys and `GroupsAccumulator`s to aggregate, with the adapter
//! for the few aggregate functions that only have a row accumulator.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::error::{Error, Result};

/// The aggregate functions of one operator, with how to evaluate their inputs.
#[derive(Debug, Clone)]
pub struct AggregateSet {
    /// The functions.
    pub functions: Vec<Arc<AggregateFunctionExpr>>,
    /// Per function: argument expressions (and ORDER BY expressions) over the input.
    pub args: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Per function: its `FILTER (WHERE ...)`.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The schema of the group keys.
    pub key_schema: SchemaRef,
}

/// Evaluated inputs of an [`AggregateSet`] for one batch.
#[derive(Debug, Clone)]
pub struct AggregateInputs {
    /// Group key columns.
    pub keys: Vec<ArrayRef>,
    /// Per function, its argument columns.
    pub args: Vec<Vec<ArrayRef>>,
    /// Per function, its filter mask.
    pub filters: Vec<Option<BooleanArray>>,
}

impl AggregateSet {
    /// The set for `functions` grouped by `keys` over `input`, checked against `output`: its
    /// first `group_columns` columns are the group columns, then one per function.
    ///
    /// # Errors
    /// When an expression has no type over `input`, or the output does not match.
    pub fn try_new(
        keys: &[Arc<dyn PhysicalExpr>],
        functions: &[Arc<AggregateFunctionExpr>],
        filters: &[Option<Arc<dyn PhysicalExpr>>],
        group_columns: usize,
        input: &SchemaRef,
        output: &SchemaRef,
    ) -> Result<Self> {
        let key_fields = keys
            .iter()
            .enumerate()
            .map(|(i, k)| Ok(Field::new(format!("key{i}"), k.data_type(input)?, true)))
            .collect::<Result<Vec<_>>>()?;
        if output.fields().len() != group_columns + functions.len() {
            return Err(Error::Internal(
                "aggregate output has the wrong number of columns".into(),
            ));
        }
        for (a, f) in functions
            .iter()
            .zip(output.fields().iter().skip(group_columns))
        {
            if a.field().data_type() != f.data_type() {
                return Err(Error::Internal(format!(
                    "aggregate {} yields {}, schema says {}",
                    a.name(),
                    a.field().data_type(),
                    f.data_type()
                )));
            }
        }
        let args = functions
            .iter()
            .map(|a| {
                // ORDER BY expressions follow the arguments, as DataFusion's own aggregate does.
                let mut exprs = a.expressions();
                exprs.extend(a.order_bys().iter().map(|o| Arc::clone(&o.expr)));
                exprs
            })
            .collect();
        Ok(Self {
            functions: functions.to_vec(),
            args,
            filters: filters.to_vec(),
            key_schema: Arc::new(Schema::new(key_fields)),
        })
    }

    /// Evaluates keys, arguments and filters over a batch.
    ///
    /// # Errors
    /// When an expression fails.
    pub fn evaluate(
        &self,
        keys: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
    ) -> Result<AggregateInputs> {
        let n = batch.num_rows();
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> {
            Ok(e.evaluate(batch)?.into_array(n)?)
        };
        let keys = keys.iter().map(eval).collect::<Result<Vec<_>>>()?;
        let args = self
            .args
            .iter()
            .map(|a| a.iter().map(eval).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let filters = self
            .filters
            .iter()
            .map(|f| {
                f.as_ref()
                    .map(|f| {
                        let a = eval(f)?;
                        a.as_any()
                            .downcast_ref::<BooleanArray>()
                            .cloned()
                            .ok_or_else(|| {
                                Error::Internal("aggregate FILTER is not boolean".into())
                            })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AggregateInputs {
            keys,
            args,
            filters,
        })
    }

    /// Fresh accumulators, one per function.
    ///
    /// # Errors
    /// When DataFusion cannot create an accumulator.
    pub fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.functions
            .iter()
            .map(|f| {
                if f.groups_accumulator_supported() {
                    Ok(f.create_groups_accumulator()?)
                } else {
                    let f = Arc::clone(f);
                    let acc: Box<dyn GroupsAccumulator> =
                        Box::new(GroupsAccumulatorAdapter::new(move || {
                            f.create_accumulator()
                        }));
                    Ok(acc)
                }
            })
            .collect()
    }
}

impl AggregateInputs {
    /// The rows at `indices`, for splitting a batch among windows.
    ///
    /// # Errors
    /// When a take kernel fails.
    pub fn take(&self, indices: &datafusion::arrow::array::UInt32Array) -> Result<Self> {
        use datafusion::arrow::compute::take;
        let t = |a: &ArrayRef| -> Result<ArrayRef> { Ok(take(a.as_ref(), indices, None)?) };
        Ok(Self {
            keys: self.keys.iter().map(t).collect::<Result<_>>()?,
            args: self
                .args
                .iter()
                .map(|a| a.iter().map(t).collect::<Result<_>>())
                .collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map(|f| {
                            let taken = take(f, indices, None)?;
                            taken
                                .as_any()
                                .downcast_ref::<BooleanArray>()
                                .cloned()
                                .ok_or_else(|| {
                                    Error::Internal("take changed a boolean array's type".into())
                                })
                        })
                        .transpose()
                })
                .collect::<Result<_>>()?,
        })
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.keys
            .first()
            .map(|k| k.len())
            .or_else(|| self.args.iter().flatten().next().map(|a| a.len()))
            .unwrap_or(0)
    }
}

/// Interns group keys to dense group indices. With no key columns every row is group 0.
enum Keys {
    None { any: bool },
    Values(Box<dyn GroupValues>),
}

impl Keys {
    fn new(schema: &SchemaRef) -> Result<Self> {
        if schema.fields().is_empty() {
            Ok(Keys::None { any: false })
        } else {
            Ok(Keys::Values(new_group_values(
                Arc::clone(schema),
                &GroupOrdering::None,
            )?))
        }
    }

    fn intern(&mut self, cols: &[ArrayRef], rows: usize, groups: &mut Vec<usize>) -> Result<()> {
        match self {
            Keys::None { any } => {
                groups.clear();
                groups.resize(rows, 0);
                *any |= rows > 0;
                Ok(())
            }
            Keys::Values(v) => Ok(v.intern(cols, groups)?),
        }
    }

    fn len(&self) -> usize {
        match self {
            Keys::None { any } => usize::from(*any),
            Keys::Values(v) => v.len(),
        }
    }

    fn emit(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            Keys::None { any } => {
                *any = false;
                Ok(vec![])
            }
            Keys::Values(v) => Ok(v.emit(EmitTo::All)?),
        }
    }
}

/// Groups and their accumulators: the state of one pane, window or session batch.
pub struct GroupedState {
    keys: Keys,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    group_indices: Vec<usize>,
}

/// The keys and per-function partial states of a [`GroupedState`], ready to merge elsewhere.
#[derive(Debug, Clone)]
pub struct PartialState {
    /// Key columns, one row per group.
    pub keys: Vec<ArrayRef>,
    /// Per function, its state columns.
    pub states: Vec<Vec<ArrayRef>>,
}

impl PartialState {
    /// Memory its arrays hold, in bytes.
    pub fn size(&self) -> usize {
        self.keys
            .iter()
            .chain(self.states.iter().flatten())
            .map(|a| a.get_array_memory_size())
            .sum()
    }
}

impl GroupedState {
    /// An empty state for `set`.
    ///
    /// # Errors
    /// When accumulators cannot be created.
    pub fn try_new(set: &AggregateSet) -> Result<Self> {
        Ok(Self {
            keys: Keys::new(&set.key_schema)?,
            accumulators: set.accumulators()?,
            group_indices: Vec::new(),
        })
    }

    /// Number of groups.
    pub fn num_groups(&self) -> usize {
        self.keys.len()
    }

    /// Adds rows.
    ///
    /// # Errors
    /// When an accumulator fails.
    pub fn update(&mut self, inputs: &AggregateInputs) -> Result<()> {
        let rows = inputs.num_rows();
        self.keys
            .intern(&inputs.keys, rows, &mut self.group_indices)?;
        let total = self.keys.len();
        for ((acc, args), filter) in self
            .accumulators
            .iter_mut()
            .zip(&inputs.args)
            .zip(&inputs.filters)
        {
            acc.update_batch(args, &self.group_indices, filter.as_ref(), total)?;
        }
        Ok(())
    }

    /// Merges partial states (from [`GroupedState::into_partial`]).
    ///
    /// # Errors
    /// When an accumulator fails.
    pub fn merge(&mut self, partial: &PartialState) -> Result<()> {
        let rows = partial
            .keys
            .first()
            .map(|k| k.len())
            .or_else(|| partial.states.iter().flatten().next().map(|a| a.len()))
            .unwrap_or(0);
        self.keys
            .intern(&partial.keys, rows, &mut self.group_indices)?;
        let total = self.keys.len();
        for (acc, states) in self.accumulators.iter_mut().zip(&partial.states) {
            acc.merge_batch(states, &self.group_indices, total)?;
        }
        Ok(())
    }

    /// Final values: the key columns, then one column per function.
    ///
    /// # Errors
    /// When an accumulator fails.
    pub fn finish(mut self) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let keys = self.keys.emit()?;
        let values = self
            .accumulators
            .iter_mut()
            .map(|a| Ok(a.evaluate(EmitTo::All)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((keys, values))
    }

    /// Partial states, to merge into the windows that share this pane.
    ///
    /// # Errors
    /// When an accumulator fails.
    pub fn into_partial(mut self) -> Result<PartialState> {
        let keys = self.keys.emit()?;
        let states = self
            .accumulators
            .iter_mut()
            .map(|a| Ok(a.state(EmitTo::All)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(PartialState { keys, states })
    }

    /// A copy of the state as partial state, for a checkpoint; the state stays as it was.
    /// (DataFusion's accumulators hand out their state only by consuming it, so the state
    /// is taken and merged back into fresh accumulators.)
    ///
    /// # Errors
    /// When an accumulator fails.
    pub fn checkpoint(&mut self, set: &AggregateSet) -> Result<PartialState> {
        let current = std::mem::replace(self, GroupedState::try_new(set)?);
        let partial = current.into_partial()?;
        self.merge(&partial)?;
        Ok(partial)
    }

    /// Approximate memory held, in bytes.
    pub fn size(&self) -> usize {
        let keys = match &self.keys {
            Keys::None { .. } => 0,
            Keys::Values(v) => v.size(),
        };
        keys + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }
}

impl std::fmt::Debug for GroupedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedState")
            .field("groups", &self.num_groups())
            .finish()
    }
}

/// Schema metadata key of a state batch: the operator's watermark.
pub(crate) const WATERMARK_KEY: &str = "sluice.watermark";
/// The tag column of a state batch: which pane, window or part a row belongs to.
const TAG: &str = "sluice_tag";

impl AggregateSet {
    /// The schema of a checkpoint's state batch: a tag, the keys, then every function's
    /// state fields.
    fn state_schema(&self, watermark: i64) -> Result<SchemaRef> {
        let mut fields = vec![Field::new(
            TAG,
            datafusion::arrow::datatypes::DataType::Int64,
            false,
        )];
        fields.extend(
            self.key_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true)),
        );
        for (i, f) in self.functions.iter().enumerate() {
            for (j, s) in f.state_fields()?.iter().enumerate() {
                fields.push(Field::new(format!("s{i}_{j}"), s.data_type().clone(), true));
            }
        }
        let metadata = [(WATERMARK_KEY.to_string(), watermark.to_string())].into();
        Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
    }

    /// Encodes tagged partial states and a watermark as one batch, for a checkpoint.
    ///
    /// # Errors
    /// When the states do not fit the functions' state fields.
    pub fn state_batch(
        &self,
        parts: Vec<(i64, PartialState)>,
        watermark: i64,
    ) -> Result<RecordBatch> {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::compute::concat;
        let schema = self.state_schema(watermark)?;
        let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::new(); schema.fields().len()];
        for (tag, part) in &parts {
            let rows = part
                .keys
                .first()
                .map(|k| k.len())
                .or_else(|| part.states.iter().flatten().next().map(|a| a.len()))
                .unwrap_or(0);
            let arrays = std::iter::once(Arc::new(Int64Array::from(vec![*tag; rows])) as ArrayRef)
                .chain(part.keys.iter().cloned())
                .chain(part.states.iter().flatten().cloned());
            for (c, a) in columns.iter_mut().zip(arrays) {
                c.push(a);
            }
        }
        let columns = columns
            .iter()
            .zip(schema.fields())
            .map(|(parts, field)| {
                if parts.is_empty() {
                    Ok(datafusion::arrow::array::new_empty_array(field.data_type()))
                } else {
                    let refs: Vec<&dyn datafusion::arrow::array::Array> =
                        parts.iter().map(|a| a.as_ref()).collect();
                    Ok(concat(&refs)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(columns.first().map_or(0, |c| c.len())));
        Ok(RecordBatch::try_new_with_options(
            schema, columns, &options,
        )?)
    }

    /// Decodes a batch from [`AggregateSet::state_batch`]: the watermark and the partial
    /// states by tag, in tag order.
    ///
    /// # Errors
    /// When the batch does not have this set's state schema.
    pub fn parse_state_batch(
        &self,
        batch: &RecordBatch,
    ) -> Result<(i64, Vec<(i64, PartialState)>)> {
        use datafusion::arrow::array::{Array, Int64Array};
        use datafusion::arrow::compute::filter_record_batch;
        let watermark = state_watermark(batch)?;
        let expected = self.state_schema(watermark)?;
        if expected.fields().len() != batch.num_columns() {
            return Err(Error::IncompatibleState(
                "checkpointed aggregate state does not match the query's aggregates".into(),
            ));
        }
        let tags = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| Error::IncompatibleState("state batch has no tag column".into()))?;
        let mut distinct: Vec<i64> = tags.values().to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let keys = self.key_schema.fields().len();
        let counts = self
            .functions
            .iter()
            .map(|f| Ok(f.state_fields()?.len()))
            .collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(distinct.len());
        for tag in distinct {
            let mask: BooleanArray = tags.iter().map(|t| Some(t == Some(tag))).collect();
            let rows = filter_record_batch(batch, &mask)?;
            let cols = rows.columns();
            let key_cols = cols[1..1 + keys].to_vec();
            let mut at = 1 + keys;
            let mut states = Vec::with_capacity(counts.len());
            for n in &counts {
                states.push(cols[at..at + n].to_vec());
                at += n;
            }
            out.push((
                tag,
                PartialState {
                    keys: key_cols,
                    states,
                },
            ));
        }
        Ok((watermark, out))
    }
}

/// The watermark saved in a state batch's metadata.
///
/// # Errors
/// When it is missing.
pub(crate) fn state_watermark(batch: &RecordBatch) -> Result<i64> {
    batch
        .schema()
        .metadata()
        .get(WATERMARK_KEY)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| Error::IncompatibleState("state batch has no watermark".into()))
}
