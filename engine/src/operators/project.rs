//! `SELECT` list: computes output columns with DataFusion's vectorised expressions.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::physical_expr::PhysicalExpr;

use crate::error::{Error, Result};
use crate::operator::{Operator, Output};

/// Evaluates one expression per output column.
#[derive(Debug)]
pub struct ProjectOperator {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
}

impl ProjectOperator {
    /// A projection from `input` to `output`.
    ///
    /// # Errors
    /// When the expressions do not produce `output`'s column types.
    pub fn try_new(
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        input: &SchemaRef,
        output: SchemaRef,
    ) -> Result<Self> {
        if exprs.len() != output.fields().len() {
            return Err(Error::Internal(format!(
                "projection of {} expressions into {} columns",
                exprs.len(),
                output.fields().len()
            )));
        }
        for (e, f) in exprs.iter().zip(output.fields()) {
            let dt = e.data_type(input)?;
            if &dt != f.data_type() {
                return Err(Error::Internal(format!(
                    "projection {e} yields {dt}, schema says {}",
                    f.data_type()
                )));
            }
        }
        Ok(Self {
            exprs,
            schema: output,
        })
    }
}

impl Operator for ProjectOperator {
    fn name(&self) -> &'static str {
        "project"
    }

    fn process_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        let n = batch.num_rows();
        let columns = self
            .exprs
            .iter()
            .map(|e| Ok(e.evaluate(&batch)?.into_array(n)?))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        out.emit(RecordBatch::try_new_with_options(
            Arc::clone(&self.schema),
            columns,
            &options,
        )?);
        Ok(())
    }
}
