//! `UNION ALL`: passes every input's rows through; the runtime aligns the watermarks.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;
use crate::operator::{Operator, Output};

/// Merges inputs of one schema.
#[derive(Debug)]
pub struct UnionOperator {
    schema: SchemaRef,
}

impl UnionOperator {
    /// A union producing `schema`.
    pub fn new(schema: SchemaRef) -> Self {
        Self { schema }
    }
}

impl Operator for UnionOperator {
    fn name(&self) -> &'static str {
        "union"
    }

    fn process_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Output) -> Result<()> {
        // Inputs are coerced to one schema by the planner; only field names may differ.
        let columns = batch.columns().to_vec();
        out.emit(RecordBatch::try_new(self.schema.clone(), columns)?);
        Ok(())
    }
}
