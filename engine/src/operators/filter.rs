//! `WHERE`: keeps the rows for which a DataFusion predicate is true.

use std::sync::Arc;

use datafusion::arrow::array::{Array, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Error, Result};
use crate::operator::{Operator, Output};

/// Filters batches with a vectorised predicate.
#[derive(Debug)]
pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
}

impl FilterOperator {
    /// A filter over batches of `input`.
    ///
    /// # Errors
    /// When the predicate is not boolean over `input`.
    pub fn try_new(predicate: Arc<dyn PhysicalExpr>, input: &SchemaRef) -> Result<Self> {
        let dt = predicate.data_type(input)?;
        if dt != DataType::Boolean {
            return Err(Error::Internal(format!(
                "filter predicate {predicate} is {dt}, not boolean"
            )));
        }
        Ok(Self { predicate })
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let mask = self
            .predicate
            .evaluate(&batch)?
            .into_array(batch.num_rows())?;
        let mask = mask
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| Error::Internal("filter predicate did not return booleans".into()))?;
        if mask.true_count() == batch.num_rows() {
            out.emit(batch);
        } else {
            out.emit(filter_record_batch(&batch, mask)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::test_util::{batch, pretty};
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn keeps_matching_rows() {
        let input = batch("a:i64,b:str", &["1,x", "5,y", "7,z"]);
        let predicate =
            crate::operators::test_util::physical(col("a").gt(lit(3i64)), &input.schema());
        let mut op = FilterOperator::try_new(predicate, &input.schema()).unwrap();
        let mut out = Output::default();
        op.process_batch(0, input, &mut out).unwrap();
        assert_eq!(pretty(out.drain().collect()), vec!["5,y", "7,z"]);
    }
}
