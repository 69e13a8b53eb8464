//! Sluice's planner: SQL text to a [`StreamPlan`].
//!
//! sqlparser parses the dialect ([`statement`]), DataFusion plans, type-checks and optimises
//! the queries against the [`Catalog`], and [`lower`] turns DataFusion's logical plan into
//! a streaming DAG. The planner never depends on the engine.
#![warn(missing_docs)]

pub mod catalog;
pub mod constant;
pub mod error;
pub mod limits;
mod lower;
pub mod plan;
pub mod statement;
pub mod tables;
pub mod window;

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::view::ViewTable;
use datafusion::common::DFSchema;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{ColumnDef, Query, Statement as SqlStatement};

pub use catalog::{
    Catalog, MaterializedViewEntry, SinkEntry, SourceEntry, ViewEntry, WatermarkSpec,
};
pub use error::{Error, Result};
pub use plan::{StreamOp, StreamPlan};
pub use statement::{
    ObjectKind, ParsedStatement, SinkInput, Statement, WatermarkClause, parse_one, parse_script,
};

use crate::tables::StreamTable;

/// The optimizer rule that rewrites `count(DISTINCT x)` into two aggregations, which a
/// stream cannot run as one windowed aggregate; Sluice evaluates DISTINCT in the accumulator.
const SKIPPED_RULES: &[&str] = &["single_distinct_aggregation_to_group_by"];

/// Plans statements against a catalog.
#[derive(Debug)]
pub struct Planner<'a> {
    catalog: &'a Catalog,
}

impl<'a> Planner<'a> {
    /// A planner over `catalog`.
    pub fn new(catalog: &'a Catalog) -> Self {
        Self { catalog }
    }

    /// A DataFusion context in which every source and materialized view of the catalog is a
    /// stream table and every view is a DataFusion view.
    ///
    /// # Errors
    /// When a view no longer plans (an object it uses was dropped).
    pub async fn context(&self) -> Result<SessionContext> {
        self.context_in(None).await
    }

    /// As [`Planner::context`], with DataFusion's runtime (its memory pool) given.
    ///
    /// # Errors
    /// As [`Planner::context`].
    pub async fn context_in(
        &self,
        runtime: Option<Arc<datafusion::execution::runtime_env::RuntimeEnv>>,
    ) -> Result<SessionContext> {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let ctx = match runtime {
            Some(runtime) => SessionContext::new_with_config_rt(config, runtime),
            None => SessionContext::new_with_config(config),
        };
        for rule in SKIPPED_RULES {
            ctx.remove_optimizer_rule(rule);
        }
        for s in self.catalog.sources.values() {
            ctx.register_table(
                s.name.as_str(),
                Arc::new(StreamTable::new(
                    &s.name,
                    ObjectKind::Source,
                    Arc::clone(&s.schema),
                )),
            )?;
        }
        for m in self.catalog.materialized_views.values() {
            ctx.register_table(
                m.name.as_str(),
                Arc::new(StreamTable::new(
                    &m.name,
                    ObjectKind::MaterializedView,
                    Arc::clone(&m.schema),
                )),
            )?;
        }
        let mut next_window = 0;
        for v in &self.catalog.views {
            let (plan, windows) = logical_plan(&ctx, &v.query, next_window).await?;
            next_window += windows;
            ctx.register_table(
                v.name.as_str(),
                Arc::new(ViewTable::new(plan, Some(v.definition.clone()))),
            )?;
        }
        Ok(ctx)
    }

    /// Plans a continuous query.
    ///
    /// # Errors
    /// On unknown tables or columns, type errors, and constructs a stream cannot run.
    pub async fn plan_query(&self, query: &Query) -> Result<StreamPlan> {
        self.plan(query, false).await
    }

    /// Plans a continuous query for a materialized view, where a `GROUP BY` without a
    /// window is allowed: the view keeps the latest row per key.
    ///
    /// # Errors
    /// As [`Planner::plan_query`].
    pub async fn plan_view_query(&self, query: &Query) -> Result<StreamPlan> {
        self.plan(query, true).await
    }

    async fn plan(&self, query: &Query, updating: bool) -> Result<StreamPlan> {
        let ctx = self.context().await?;
        let (plan, _) = logical_plan(&ctx, query, 1_000_000).await?;
        let state = ctx.state();
        let optimized = state.optimize(&plan)?;
        let stream = lower::Lowering::new(&state)
            .allow_updating(updating)
            .finish(&optimized)?;
        self.check_event_time(&stream)?;
        Ok(stream)
    }

    /// Windows need event time: every source under a window aggregate must have a watermark.
    fn check_event_time(&self, plan: &StreamPlan) -> Result<()> {
        let windowed = plan
            .nodes
            .iter()
            .any(|n| matches!(n.op, StreamOp::WindowAggregate(_)));
        if !windowed {
            return Ok(());
        }
        for name in plan.sources() {
            let has = self
                .catalog
                .sources
                .get(name)
                .is_some_and(|s| s.watermark.is_some());
            if !has {
                return Err(Error::plan(format!(
                    "source '{name}' has no event time: declare WATERMARK FOR <column> AS <column> - INTERVAL '...' to use it in a window"
                )));
            }
        }
        Ok(())
    }

    /// The output schema of a query, as for a view.
    ///
    /// # Errors
    /// When the query does not plan.
    pub async fn query_schema(&self, query: &Query) -> Result<SchemaRef> {
        let ctx = self.context().await?;
        let (plan, _) = logical_plan(&ctx, query, 1_000_000).await?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }
}

/// Plans `query` in `ctx` with its window functions rewritten. Returns the plan and how many
/// window tables were registered.
async fn logical_plan(
    ctx: &SessionContext,
    query: &Query,
    first_window: usize,
) -> Result<(LogicalPlan, usize)> {
    let mut query = query.clone();
    let windows = window::rewrite_windows(ctx, &mut query, first_window).await?;
    let statement = DfStatement::Statement(Box::new(SqlStatement::Query(Box::new(query))));
    let plan = ctx.state().statement_to_plan(statement).await?;
    Ok((plan, windows.len()))
}

/// The Arrow schema of a column list, with DataFusion's SQL type mapping (`TIMESTAMP` is a
/// nanosecond timestamp, `VARCHAR` is Utf8, ...).
///
/// # Errors
/// On an unknown type or a repeated column name.
pub async fn columns_schema(columns: &[ColumnDef]) -> Result<SchemaRef> {
    if columns.is_empty() {
        return Ok(Arc::new(Schema::empty()));
    }
    let mut seen = std::collections::HashSet::new();
    let mut select = Vec::with_capacity(columns.len());
    for c in columns {
        if !seen.insert(c.name.value.to_ascii_lowercase()) {
            return Err(Error::plan(format!(
                "column '{}' is declared twice",
                c.name.value
            )));
        }
        select.push(format!(
            "CAST(NULL AS {}) AS \"{}\"",
            c.data_type,
            c.name.value.replace('"', "\"\"")
        ));
    }
    let ctx = SessionContext::new();
    let plan = ctx
        .state()
        .create_logical_plan(&format!("SELECT {}", select.join(", ")))
        .await?;
    let fields: Vec<Field> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                // Views are DataFusion's default for strings in some configurations; sources speak Utf8.
                DataType::Utf8View => DataType::Utf8,
                other => other.clone(),
            };
            Field::new(f.name(), dt, true)
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Plans a source's `WATERMARK FOR column AS expr` against its schema.
///
/// # Errors
/// When the column is missing or not a timestamp, or the expression is not a timestamp.
pub fn plan_watermark(schema: &SchemaRef, clause: &WatermarkClause) -> Result<WatermarkSpec> {
    let column = clause.column.value.clone();
    let (column_index, field) = schema
        .column_with_name(&column)
        .or_else(|| {
            schema
                .fields()
                .iter()
                .enumerate()
                .find(|(_, f)| f.name().eq_ignore_ascii_case(&column))
                .map(|(i, f)| (i, f.as_ref()))
        })
        .ok_or_else(|| {
            Error::plan(format!(
                "WATERMARK FOR '{column}': the source has no such column"
            ))
        })?;
    if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
        return Err(Error::plan(format!(
            "WATERMARK FOR '{column}': the column must be a TIMESTAMP, but it is {}",
            field.data_type()
        )));
    }
    // The expression is planned over the event-time column alone: the runtime evaluates it
    // once per batch, on the batch's largest event time. That is exact for the expressions a
    // watermark is made of (the column minus a delay), which never decrease as time grows.
    let ctx = SessionContext::new();
    let tz = match field.data_type() {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    };
    let input = Arc::new(Schema::new(vec![Field::new(
        field.name(),
        DataType::Timestamp(TimeUnit::Nanosecond, tz),
        true,
    )]));
    let df_schema = DFSchema::try_from(input.as_ref().clone())?;
    let state = ctx.state();
    let logical = state
        .create_logical_expr_from_sql_expr(
            datafusion::sql::sqlparser::ast::ExprWithAlias {
                expr: clause.expr.clone(),
                alias: None,
            },
            &df_schema,
        )
        .map_err(|e| {
            Error::plan(format!(
                "WATERMARK FOR '{column}': the expression may use only '{column}': {}",
                Error::from(e)
            ))
        })?;
    let logical =
        datafusion::logical_expr::cast(logical, DataType::Timestamp(TimeUnit::Nanosecond, None));
    let expr = state.create_physical_expr(logical, &df_schema)?;
    Ok(WatermarkSpec {
        column: field.name().clone(),
        column_index,
        input,
        expr,
        display: format!("{} AS {}", clause.column, clause.expr),
    })
}
