//! Evaluates constant SQL expressions (interval lengths, watermark delays) at plan time.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::ColumnarValue;
use datafusion::sql::sqlparser::ast::ExprWithAlias;

use crate::error::{Error, Result};

/// Plans and evaluates `expr`, which may use no columns.
///
/// # Errors
/// When the expression does not plan, uses a column, or fails to evaluate.
pub fn evaluate(
    ctx: &SessionContext,
    expr: ExprWithAlias,
    schema: &DFSchema,
) -> Result<ScalarValue> {
    let state = ctx.state();
    let logical = state.create_logical_expr_from_sql_expr(expr, schema)?;
    let physical = state.create_physical_expr(logical, schema)?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .map_err(|e| Error::Internal(e.to_string()))?;
    match physical.evaluate(&batch)? {
        ColumnarValue::Scalar(s) => Ok(s),
        ColumnarValue::Array(a) => Ok(ScalarValue::try_from_array(&a, 0)?),
    }
}
