//! Table providers that stand for streams while DataFusion plans a query: a source or a
//! materialized view is a named schema here; the lowering to a streaming plan finds them
//! by downcasting the scan's provider.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use crate::statement::ObjectKind;

/// A stream relation: a source or a materialized view's change stream.
#[derive(Debug)]
pub struct StreamTable {
    /// Its name in the catalog.
    pub name: String,
    /// Source or materialized view.
    pub kind: ObjectKind,
    schema: SchemaRef,
}

impl StreamTable {
    /// A stream relation named `name`.
    pub fn new(name: impl Into<String>, kind: ObjectKind, schema: SchemaRef) -> Self {
        Self {
            name: name.into(),
            kind,
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for StreamTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Base
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "{} '{}' is a stream: it is read by a continuous query, not a batch scan",
            self.kind, self.name
        )))
    }
}
