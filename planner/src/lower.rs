//! Lowers DataFusion's optimised logical plan to a [`StreamPlan`].
//!
//! Stateless nodes (projection, filter, alias, union) map one to one. A scan of a window
//! table becomes its inner relation plus two columns, `window_start` and `window_end`, that
//! carry each row's event time until the `GROUP BY` that must consume them; the aggregate
//! becomes a [`WindowAggregate`] that assigns rows to windows itself. Anything a stream
//! cannot run yet is rejected here, naming the construct.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Column, DFSchema};
use datafusion::datasource::source_as_provider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan, cast};
use datafusion::physical_expr::PhysicalExpr;
#[allow(deprecated)]
use datafusion::physical_planner::create_aggregate_expr_and_maybe_filter;

use crate::error::{Error, Result};
use crate::plan::{
    Edge, GroupColumn, NodeId, Partitioning, StreamNode, StreamOp, StreamPlan, WindowAggregate,
};
use crate::statement::ObjectKind;
use crate::tables::StreamTable;
use crate::window::{WINDOW_END, WINDOW_START, WindowKind, WindowTable};

/// Where an un-aggregated window's columns sit in a node's output.
#[derive(Debug, Clone, Copy)]
struct WindowColumns {
    kind: WindowKind,
    start: Option<usize>,
    end: Option<usize>,
}

impl WindowColumns {
    fn contains(&self, i: usize) -> bool {
        self.start == Some(i) || self.end == Some(i)
    }
}

struct Lowered {
    id: NodeId,
    window: Option<WindowColumns>,
}

/// Builds a [`StreamPlan`] from a logical plan.
pub(crate) struct Lowering<'a> {
    state: &'a SessionState,
    nodes: Vec<StreamNode>,
    /// Whether a GROUP BY without a window may become an updating aggregate (for
    /// materialized views, which keep the latest row per key).
    updating: bool,
}

impl<'a> Lowering<'a> {
    pub(crate) fn new(state: &'a SessionState) -> Self {
        Self {
            state,
            nodes: Vec::new(),
            updating: false,
        }
    }

    pub(crate) fn allow_updating(mut self, allow: bool) -> Self {
        self.updating = allow;
        self
    }

    pub(crate) fn finish(mut self, plan: &LogicalPlan) -> Result<StreamPlan> {
        let root = self.lower(plan)?;
        if root
            .window
            .is_some_and(|w| w.start.is_some() || w.end.is_some())
        {
            return Err(Error::unsupported(
                "selecting window_start/window_end without GROUP BY: a window function's rows must be aggregated with GROUP BY window_start, window_end",
            ));
        }
        Ok(StreamPlan {
            nodes: self.nodes,
            root: root.id,
        })
    }

    fn push(&mut self, op: StreamOp, inputs: Vec<Edge>, schema: &DFSchema) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(StreamNode {
            id,
            op,
            inputs,
            schema: Arc::new(schema.as_arrow().clone()),
            parallelism: 1,
        });
        id
    }

    fn forward(from: NodeId) -> Vec<Edge> {
        vec![Edge {
            from,
            partitioning: Partitioning::Forward,
        }]
    }

    fn physical(&self, expr: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(self.state.create_physical_expr(expr.clone(), schema)?)
    }

    fn lower(&mut self, plan: &LogicalPlan) -> Result<Lowered> {
        match plan {
            LogicalPlan::TableScan(scan) => self.lower_scan(scan),
            LogicalPlan::SubqueryAlias(alias) => self.lower(&alias.input),
            LogicalPlan::Projection(p) => {
                let input = self.lower(&p.input)?;
                let in_schema = p.input.schema();
                let mut window = input.window.map(|w| WindowColumns {
                    start: None,
                    end: None,
                    ..w
                });
                let mut exprs = Vec::with_capacity(p.expr.len());
                for (i, e) in p.expr.iter().enumerate() {
                    if let Some(w) = input.window {
                        if let Some(j) = bare_column(e, in_schema) {
                            if let Some(out) = window.as_mut() {
                                if w.start == Some(j) {
                                    out.start = Some(i);
                                } else if w.end == Some(j) {
                                    out.end = Some(i);
                                }
                            }
                        } else {
                            reject_window_use(e, in_schema, &w)?;
                        }
                    }
                    exprs.push(self.physical(e, in_schema)?);
                }
                let id = self.push(
                    StreamOp::Project { exprs },
                    Self::forward(input.id),
                    &p.schema,
                );
                Ok(Lowered { id, window })
            }
            LogicalPlan::Filter(f) => {
                let input = self.lower(&f.input)?;
                if let Some(w) = input.window {
                    reject_window_use(&f.predicate, f.input.schema(), &w)?;
                }
                let predicate = self.physical(&f.predicate, f.input.schema())?;
                let id = self.push(
                    StreamOp::Filter { predicate },
                    Self::forward(input.id),
                    f.input.schema(),
                );
                Ok(Lowered {
                    id,
                    window: input.window,
                })
            }
            LogicalPlan::Aggregate(agg) => self.lower_aggregate(agg),
            LogicalPlan::Union(u) => {
                let mut inputs = Vec::with_capacity(u.inputs.len());
                for input in &u.inputs {
                    let l = self.lower(input)?;
                    if l.window
                        .is_some_and(|w| w.start.is_some() || w.end.is_some())
                    {
                        return Err(Error::unsupported(
                            "UNION ALL of un-aggregated window function rows",
                        ));
                    }
                    inputs.push(Edge {
                        from: l.id,
                        partitioning: Partitioning::Forward,
                    });
                }
                let id = self.push(StreamOp::Union, inputs, &u.schema);
                Ok(Lowered { id, window: None })
            }
            LogicalPlan::Join(_) => Err(Error::unsupported(
                "JOIN (joins of streams are not supported yet)",
            )),
            LogicalPlan::Sort(_) => Err(Error::unsupported(
                "ORDER BY: a stream has no end to sort by; sort when you query the results",
            )),
            LogicalPlan::Limit(_) => Err(Error::unsupported("LIMIT/OFFSET over a stream")),
            LogicalPlan::Window(_) => Err(Error::unsupported("window functions with OVER (...)")),
            LogicalPlan::Distinct(_) => Err(Error::unsupported(
                "SELECT DISTINCT (an updating query; group by a window instead)",
            )),
            LogicalPlan::Unnest(_) => Err(Error::unsupported("UNNEST")),
            LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => Err(Error::unsupported(
                "a query that reads no source: a continuous query must read from a source",
            )),
            LogicalPlan::RecursiveQuery(_) => Err(Error::unsupported("recursive CTEs")),
            LogicalPlan::Subquery(_) => Err(Error::unsupported("subqueries in expressions")),
            other => Err(Error::unsupported(format!(
                "the plan node {}",
                other.display()
            ))),
        }
    }

    fn lower_scan(&mut self, scan: &TableScan) -> Result<Lowered> {
        if !scan.filters.is_empty() {
            return Err(Error::Internal(
                "a filter was pushed into a stream scan".into(),
            ));
        }
        let provider = source_as_provider(&scan.source)?;
        if let Some(table) = provider.downcast_ref::<StreamTable>() {
            if table.kind != ObjectKind::Source {
                return Err(Error::unsupported(format!(
                    "reading {} '{}' as a stream; query it directly, or build on its source",
                    table.kind, table.name
                )));
            }
            let id = self.push(
                StreamOp::Source {
                    name: table.name.clone(),
                    projection: scan.projection.clone(),
                },
                vec![],
                &scan.projected_schema,
            );
            return Ok(Lowered { id, window: None });
        }
        if let Some(window) = provider.downcast_ref::<WindowTable>() {
            let full_schema = window.inner.schema();
            let n = full_schema.fields().len();
            let all: Vec<usize> = (0..n + 2).collect();
            let projection = scan.projection.clone().unwrap_or(all);
            // Read only the inner columns the query uses, plus the time column, so that
            // projection pushdown reaches the source.
            let needed: std::collections::BTreeSet<usize> = projection
                .iter()
                .copied()
                .filter(|&i| i < n)
                .chain([window.time_index])
                .collect();
            let needed: Vec<usize> = needed.into_iter().collect();
            let pruned = datafusion::logical_expr::LogicalPlanBuilder::from(window.inner.clone())
                .project(
                    needed
                        .iter()
                        .map(|&i| Expr::Column(Column::from(full_schema.qualified_field(i)))),
                )?
                .build()?;
            let pruned = self.state.optimize(&pruned)?;
            let inner = self.lower(&pruned)?;
            let inner_schema = pruned.schema();
            let position = |i: usize| needed.iter().position(|&j| j == i).unwrap_or(0);
            let time = Expr::Column(Column::from(
                inner_schema.qualified_field(position(window.time_index)),
            ));
            let time = cast(time, DataType::Timestamp(TimeUnit::Nanosecond, None));
            let mut exprs = Vec::with_capacity(projection.len());
            let mut cols = WindowColumns {
                kind: window.kind,
                start: None,
                end: None,
            };
            for (out, &i) in projection.iter().enumerate() {
                let e = if i < n {
                    Expr::Column(Column::from(inner_schema.qualified_field(position(i))))
                } else {
                    if i == n {
                        cols.start = Some(out);
                    } else {
                        cols.end = Some(out);
                    }
                    time.clone()
                };
                exprs.push(self.physical(&e, inner_schema)?);
            }
            let id = self.push(
                StreamOp::Project { exprs },
                Self::forward(inner.id),
                &scan.projected_schema,
            );
            return Ok(Lowered {
                id,
                window: Some(cols),
            });
        }
        Err(Error::unsupported(format!(
            "reading table '{}', which is neither a source nor a view",
            scan.table_name
        )))
    }

    fn lower_aggregate(&mut self, agg: &datafusion::logical_expr::Aggregate) -> Result<Lowered> {
        let input = self.lower(&agg.input)?;
        let in_schema = agg.input.schema();
        let Some(window) = input.window else {
            if !self.updating {
                return Err(Error::unsupported(
                    "GROUP BY without a window here: it produces updates, not appends; group by window_start and window_end of TUMBLE, HOP, SESSION or CUMULATE, or keep the latest row per key in a MATERIALIZED VIEW",
                ));
            }
            return self.lower_updating(agg, input.id);
        };
        let mut keys = Vec::new();
        let mut group_columns = Vec::new();
        let mut time_index = None;
        for e in &agg.group_expr {
            if let Expr::GroupingSet(_) = e {
                return Err(Error::unsupported("GROUPING SETS, CUBE and ROLLUP"));
            }
            match bare_column(e, in_schema) {
                Some(j) if window.start == Some(j) => {
                    group_columns.push(GroupColumn::WindowStart);
                    time_index = Some(j);
                }
                Some(j) if window.end == Some(j) => {
                    group_columns.push(GroupColumn::WindowEnd);
                    time_index = Some(j);
                }
                _ => {
                    reject_window_use(e, in_schema, &window)?;
                    group_columns.push(GroupColumn::Key(keys.len()));
                    keys.push(self.physical(e, in_schema)?);
                }
            }
        }
        let Some(time_index) = time_index else {
            return Err(Error::unsupported(format!(
                "aggregating rows of a window function without grouping by {WINDOW_START} or {WINDOW_END}"
            )));
        };
        let physical_schema = in_schema.as_arrow();
        let mut aggregates = Vec::with_capacity(agg.aggr_expr.len());
        let mut filters = Vec::with_capacity(agg.aggr_expr.len());
        for e in &agg.aggr_expr {
            reject_window_use(e, in_schema, &window)?;
            // The builder DataFusion now prefers produces the same triple; this helper keeps
            // the one-call form until the builder API settles.
            #[allow(deprecated)]
            let (aggregate, filter, _order) = create_aggregate_expr_and_maybe_filter(
                e,
                in_schema,
                physical_schema,
                self.state.execution_props(),
            )?;
            aggregates.push(aggregate);
            filters.push(filter);
        }
        let spec = WindowAggregate {
            kind: window.kind,
            time_index,
            keys: keys.clone(),
            group_columns,
            aggregates,
            filters,
        };
        let partitioning = if keys.is_empty() {
            Partitioning::Forward
        } else {
            Partitioning::Hash(keys)
        };
        let id = self.push(
            StreamOp::WindowAggregate(spec),
            vec![Edge {
                from: input.id,
                partitioning,
            }],
            &agg.schema,
        );
        Ok(Lowered { id, window: None })
    }
}

impl Lowering<'_> {
    fn lower_updating(
        &mut self,
        agg: &datafusion::logical_expr::Aggregate,
        input: NodeId,
    ) -> Result<Lowered> {
        let in_schema = agg.input.schema();
        let mut keys = Vec::with_capacity(agg.group_expr.len());
        for e in &agg.group_expr {
            if let Expr::GroupingSet(_) = e {
                return Err(Error::unsupported("GROUPING SETS, CUBE and ROLLUP"));
            }
            keys.push(self.physical(e, in_schema)?);
        }
        let mut aggregates = Vec::with_capacity(agg.aggr_expr.len());
        let mut filters = Vec::with_capacity(agg.aggr_expr.len());
        for e in &agg.aggr_expr {
            #[allow(deprecated)]
            let (aggregate, filter, _order) = create_aggregate_expr_and_maybe_filter(
                e,
                in_schema,
                in_schema.as_arrow(),
                self.state.execution_props(),
            )?;
            aggregates.push(aggregate);
            filters.push(filter);
        }
        let partitioning = if keys.is_empty() {
            Partitioning::Forward
        } else {
            Partitioning::Hash(keys.clone())
        };
        let spec = crate::plan::UpdatingAggregate {
            keys,
            aggregates,
            filters,
        };
        let id = self.push(
            StreamOp::UpdatingAggregate(spec),
            vec![Edge {
                from: input,
                partitioning,
            }],
            &agg.schema,
        );
        Ok(Lowered { id, window: None })
    }
}

/// The input index of `e` when it is a bare (possibly aliased) column reference.
fn bare_column(e: &Expr, schema: &DFSchema) -> Option<usize> {
    match e {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        Expr::Alias(a) => bare_column(&a.expr, schema),
        _ => None,
    }
}

fn reject_window_use(e: &Expr, schema: &DFSchema, window: &WindowColumns) -> Result<()> {
    let uses = e
        .column_refs()
        .into_iter()
        .any(|c| schema.index_of_column(c).is_ok_and(|i| window.contains(i)));
    if uses {
        return Err(Error::unsupported(format!(
            "the expression '{e}' uses {WINDOW_START}/{WINDOW_END} before the GROUP BY; they are known only once rows are grouped into windows"
        )));
    }
    Ok(())
}
