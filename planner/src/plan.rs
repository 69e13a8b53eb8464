//! The streaming plan: a DAG of operators with the partitioning of every edge, which the
//! engine turns into running tasks. Physical expressions and aggregate functions are
//! DataFusion's, so the engine evaluates exactly what DataFusion would.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::window::WindowKind;

/// Index of a node in [`StreamPlan::nodes`].
pub type NodeId = usize;

/// How rows travel along an edge when the downstream operator runs as several instances.
#[derive(Debug, Clone)]
pub enum Partitioning {
    /// Instance i feeds instance i (or the single instance).
    Forward,
    /// Rows go to the instance chosen by hashing these expressions over the upstream rows.
    Hash(Vec<Arc<dyn PhysicalExpr>>),
}

/// An input edge.
#[derive(Debug, Clone)]
pub struct Edge {
    /// The upstream node.
    pub from: NodeId,
    /// How rows are distributed over this node's instances.
    pub partitioning: Partitioning,
}

/// One column of a windowed aggregate's group-by output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupColumn {
    /// The i-th key expression.
    Key(usize),
    /// The window's start.
    WindowStart,
    /// The window's end.
    WindowEnd,
}

/// A windowed `GROUP BY`.
#[derive(Debug, Clone)]
pub struct WindowAggregate {
    /// The window shape.
    pub kind: WindowKind,
    /// The input column holding each row's event time (nanosecond timestamp).
    pub time_index: usize,
    /// Group keys other than the window columns, over the input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// The group-by columns of the output, in order.
    pub group_columns: Vec<GroupColumn>,
    /// Aggregate functions, after the group columns in the output.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE ...)` of each aggregate.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

/// A `GROUP BY` without a window: an updating aggregate. Each time input arrives it emits
/// the current value of every group (a full snapshot), which a materialized view keeps as
/// the latest row per key.
#[derive(Debug, Clone)]
pub struct UpdatingAggregate {
    /// Group keys over the input, in output order.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Aggregate functions, after the keys in the output.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE ...)` of each aggregate.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
}

/// What a node does.
#[derive(Debug, Clone)]
pub enum StreamOp {
    /// Reads a source from the catalog; `projection` indexes its schema.
    Source {
        /// Source name.
        name: String,
        /// Columns kept, if not all.
        projection: Option<Vec<usize>>,
    },
    /// Keeps the rows where the predicate is true.
    Filter {
        /// The predicate.
        predicate: Arc<dyn PhysicalExpr>,
    },
    /// Computes the output columns.
    Project {
        /// One expression per output column.
        exprs: Vec<Arc<dyn PhysicalExpr>>,
    },
    /// Windowed aggregation, emitting each window once when the watermark passes its end.
    WindowAggregate(WindowAggregate),
    /// Aggregation without a window, emitting snapshots of every group.
    UpdatingAggregate(UpdatingAggregate),
    /// Merges its inputs (`UNION ALL`).
    Union,
}

impl StreamOp {
    /// Whether the operator keeps state between batches.
    pub fn is_stateful(&self) -> bool {
        matches!(
            self,
            StreamOp::WindowAggregate(_) | StreamOp::UpdatingAggregate(_)
        )
    }
}

/// A node of the plan.
#[derive(Debug, Clone)]
pub struct StreamNode {
    /// Its index.
    pub id: NodeId,
    /// What it does.
    pub op: StreamOp,
    /// Its inputs.
    pub inputs: Vec<Edge>,
    /// The schema of the batches it emits.
    pub schema: SchemaRef,
    /// How many instances run it (1 until the engine runs operators in parallel).
    pub parallelism: usize,
}

/// A continuous query, ready for the engine.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// Nodes in topological order: inputs come before the nodes that read them.
    pub nodes: Vec<StreamNode>,
    /// The node whose output is the query's result.
    pub root: NodeId,
}

impl StreamPlan {
    /// The result schema.
    pub fn schema(&self) -> SchemaRef {
        self.nodes
            .get(self.root)
            .map(|n| Arc::clone(&n.schema))
            .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()))
    }

    /// Whether the plan produces updates (snapshots of groups) rather than appends.
    pub fn is_updating(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.op, StreamOp::UpdatingAggregate(_)))
    }

    /// For an updating plan, the output columns that identify a row: where the `GROUP BY`
    /// keys reach the output through the projections and filters (`HAVING`) above the
    /// aggregate. `None` for an append-only plan, or when a key is not in the output.
    pub fn update_key(&self) -> Option<Vec<usize>> {
        // From the root down to the aggregate, through single-input stateless nodes.
        let mut chain = Vec::new();
        let mut id = self.root;
        let keys = loop {
            let node = self.nodes.get(id)?;
            match &node.op {
                StreamOp::UpdatingAggregate(u) => break u.keys.len(),
                StreamOp::Filter { .. } | StreamOp::Project { .. } if node.inputs.len() == 1 => {
                    chain.push(node);
                    id = node.inputs[0].from;
                }
                _ => return None,
            }
        };
        // Then up again, following each key column.
        let mut at: Vec<usize> = (0..keys).collect();
        for node in chain.iter().rev() {
            if let StreamOp::Project { exprs } = &node.op {
                at = at
                    .iter()
                    .map(|k| {
                        exprs.iter().position(|e| {
                            e.downcast_ref::<datafusion::physical_expr::expressions::Column>()
                                .is_some_and(|c| c.index() == *k)
                        })
                    })
                    .collect::<Option<Vec<usize>>>()?;
            }
        }
        Some(at)
    }

    /// The names of the sources the plan reads.
    pub fn sources(&self) -> Vec<&str> {
        self.nodes
            .iter()
            .filter_map(|n| match &n.op {
                StreamOp::Source { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    fn fmt_node(&self, f: &mut fmt::Formatter<'_>, id: NodeId, depth: usize) -> fmt::Result {
        let Some(node) = self.nodes.get(id) else {
            return Ok(());
        };
        let pad = "  ".repeat(depth);
        let exprs = |v: &[Arc<dyn PhysicalExpr>]| {
            v.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &node.op {
            StreamOp::Source { name, projection } => {
                let cols: Vec<&str> = node
                    .schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                let _ = projection;
                writeln!(f, "{pad}Source: {name} [{}]", cols.join(", "))?;
            }
            StreamOp::Filter { predicate } => writeln!(f, "{pad}Filter: {predicate}")?,
            StreamOp::Project { exprs: e } => {
                let names: Vec<String> = e
                    .iter()
                    .zip(node.schema.fields())
                    .map(|(e, field)| format!("{e} AS {}", field.name()))
                    .collect();
                writeln!(f, "{pad}Project: {}", names.join(", "))?;
            }
            StreamOp::WindowAggregate(w) => {
                let aggs: Vec<&str> = w.aggregates.iter().map(|a| a.name()).collect();
                writeln!(
                    f,
                    "{pad}WindowAggregate: window={}, keys=[{}], aggregates=[{}], emit=on watermark",
                    w.kind,
                    exprs(&w.keys),
                    aggs.join(", ")
                )?;
            }
            StreamOp::Union => writeln!(f, "{pad}Union")?,
            StreamOp::UpdatingAggregate(u) => {
                let aggs: Vec<&str> = u.aggregates.iter().map(|a| a.name()).collect();
                writeln!(
                    f,
                    "{pad}UpdatingAggregate: keys=[{}], aggregates=[{}], emit=snapshot per batch",
                    exprs(&u.keys),
                    aggs.join(", ")
                )?;
            }
        }
        for edge in &node.inputs {
            if let Partitioning::Hash(keys) = &edge.partitioning {
                writeln!(f, "{pad}  Exchange: hash([{}])", exprs(keys))?;
                self.fmt_node(f, edge.from, depth + 2)?;
            } else {
                self.fmt_node(f, edge.from, depth + 1)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for StreamPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_node(f, self.root, 0)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Catalog, Planner, SourceEntry, Statement};

    use super::StreamPlan;

    async fn view_plan(query: &str) -> StreamPlan {
        let create =
            crate::parse_one("CREATE SOURCE t (k BIGINT, v BIGINT) WITH (connector = 'x')")
                .unwrap();
        let Statement::CreateSource { columns, .. } = create.statement else {
            panic!("not a source")
        };
        let mut catalog = Catalog::default();
        catalog.sources.insert(
            "t".into(),
            SourceEntry {
                name: "t".into(),
                schema: crate::columns_schema(&columns).await.unwrap(),
                watermark: None,
                connector: "x".into(),
                options: vec![],
                definition: String::new(),
            },
        );
        let Statement::Query(q) = crate::parse_one(query).unwrap().statement else {
            panic!("not a query")
        };
        Planner::new(&catalog).plan_view_query(&q).await.unwrap()
    }

    #[tokio::test]
    async fn update_key_follows_the_group_keys_to_the_output() {
        let key = |q: &'static str| async move { view_plan(q).await.update_key() };
        assert_eq!(
            key("SELECT k, count(*) AS n FROM t GROUP BY k").await,
            Some(vec![0])
        );
        assert_eq!(
            key("SELECT count(*) AS n, k FROM t GROUP BY k HAVING count(*) > 1").await,
            Some(vec![1])
        );
        assert_eq!(
            key("SELECT v, k, sum(v) FROM t GROUP BY k, v").await,
            Some(vec![1, 0])
        );
        assert_eq!(key("SELECT count(*) AS n FROM t GROUP BY k").await, None);
        assert_eq!(key("SELECT k, v FROM t").await, None);
    }
}
