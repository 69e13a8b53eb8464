//! Window table functions: `TUMBLE`, `HOP`, `SESSION` and `CUMULATE` in FROM.
//!
//! Planning rewrites each call into a scan of a [`WindowTable`], a table registered for the
//! one query whose schema is the inner relation's plus `window_start` and `window_end`.
//! DataFusion then plans, type-checks and optimises the query as usual; the lowering to a
//! streaming plan recognises the scan and the `GROUP BY` over its window columns.

use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{Expr as LogicalExpr, LogicalPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::sql::sqlparser::ast::{
    Expr, ExprWithAlias, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, Query,
    TableFactor, VisitMut, VisitorMut,
};

use crate::error::{Error, Result};

/// The column names a window function adds.
pub const WINDOW_START: &str = "window_start";
/// See [`WINDOW_START`].
pub const WINDOW_END: &str = "window_end";

/// A window function's shape; every length is in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLE(rel, col, size)`: [k·size, (k+1)·size).
    Tumble {
        /// Window length.
        size: i64,
    },
    /// `HOP(rel, col, slide, size)`: windows of `size` starting at every multiple of `slide`.
    Hop {
        /// Distance between window starts.
        slide: i64,
        /// Window length.
        size: i64,
    },
    /// `SESSION(rel, col, gap)`: per group key, rows closer than `gap` share a window.
    Session {
        /// Inactivity gap.
        gap: i64,
    },
    /// `CUMULATE(rel, col, step, size)`: [k·size, k·size + n·step) for n = 1..size/step.
    Cumulate {
        /// Growth step.
        step: i64,
        /// Maximum window length.
        size: i64,
    },
}

impl WindowKind {
    /// The pane length: the largest interval that every window of this kind is a whole
    /// number of (sessions have none).
    pub fn pane(&self) -> Option<i64> {
        match *self {
            WindowKind::Tumble { size } => Some(size),
            WindowKind::Hop { slide, size } => Some(gcd(slide, size)),
            WindowKind::Cumulate { step, .. } => Some(step),
            WindowKind::Session { .. } => None,
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |n: i64| format_duration(n);
        match *self {
            WindowKind::Tumble { size } => write!(f, "tumble(size={})", d(size)),
            WindowKind::Hop { slide, size } => {
                write!(f, "hop(slide={}, size={})", d(slide), d(size))
            }
            WindowKind::Session { gap } => write!(f, "session(gap={})", d(gap)),
            WindowKind::Cumulate { step, size } => {
                write!(f, "cumulate(step={}, size={})", d(step), d(size))
            }
        }
    }
}

/// Formats nanoseconds as the shortest exact unit: `10s`, `250ms`, `3m`.
pub fn format_duration(nanos: i64) -> String {
    const UNITS: [(i64, &str); 6] = [
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ];
    for (n, u) in UNITS {
        if nanos % n == 0 {
            return format!("{}{u}", nanos / n);
        }
    }
    format!("{nanos}ns")
}

/// A window function call found in a query, before its relation is planned.
#[derive(Debug, Clone)]
pub(crate) struct WindowCall {
    pub table_name: String,
    pub function: String,
    pub relation: ObjectName,
    pub time_column: String,
    pub lengths: Vec<Expr>,
}

/// The table a window call is replaced by.
#[derive(Debug)]
pub struct WindowTable {
    /// The window shape.
    pub kind: WindowKind,
    /// The relation the window function reads, as DataFusion planned `SELECT * FROM rel`.
    pub inner: LogicalPlan,
    /// Index of the time column in `inner`'s schema.
    pub time_index: usize,
    /// Name of the time column.
    pub time_column: String,
    schema: SchemaRef,
}

impl WindowTable {
    fn try_new(
        kind: WindowKind,
        inner: LogicalPlan,
        time_column: &str,
        function: &str,
    ) -> Result<Self> {
        let inner_schema = inner.schema().as_arrow().clone();
        let (time_index, field) = inner_schema.column_with_name(time_column).ok_or_else(|| {
            Error::plan(format!(
                "{function}: column '{time_column}' does not exist in the relation"
            ))
        })?;
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            return Err(Error::plan(format!(
                "{function}: the time column '{time_column}' must be a TIMESTAMP, but it is {}",
                field.data_type()
            )));
        }
        let mut fields: Vec<Field> = inner_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for name in [WINDOW_START, WINDOW_END] {
            if inner_schema.column_with_name(name).is_some() {
                return Err(Error::plan(format!(
                    "{function}: the relation already has a column named '{name}'"
                )));
            }
            fields.push(Field::new(
                name,
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ));
        }
        Ok(Self {
            kind,
            inner,
            time_index,
            time_column: time_column.to_string(),
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
    fn table_type(&self) -> TableType {
        TableType::Temporary
    }
    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[LogicalExpr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::NotImplemented(
            "window table functions run only in streaming queries".into(),
        ))
    }
}

struct FindWindows {
    calls: Vec<WindowCall>,
    error: Option<Error>,
    next_id: usize,
}

const WINDOW_FUNCTIONS: [&str; 4] = ["tumble", "hop", "session", "cumulate"];

impl VisitorMut for FindWindows {
    type Break = ();

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let found = match factor {
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => {
                let fname = name.to_string().to_ascii_lowercase();
                if WINDOW_FUNCTIONS.contains(&fname.as_str()) {
                    Some((fname, args.args.clone()))
                } else {
                    None
                }
            }
            TableFactor::TableFunction {
                expr: Expr::Function(f),
                ..
            } => {
                let fname = f.name.to_string().to_ascii_lowercase();
                match (&f.args, WINDOW_FUNCTIONS.contains(&fname.as_str())) {
                    (FunctionArguments::List(list), true) => Some((fname, list.args.clone())),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((function, args)) = found else {
            return ControlFlow::Continue(());
        };
        let table_name = format!("__sluice_window_{}", self.next_id);
        self.next_id += 1;
        match window_call(&function, &args, &table_name) {
            Ok(call) => {
                let alias = match factor {
                    TableFactor::Table { alias, .. } | TableFactor::TableFunction { alias, .. } => {
                        alias.take()
                    }
                    _ => None,
                };
                *factor = TableFactor::Table {
                    name: ObjectName::from(vec![Ident::new(&table_name)]),
                    alias,
                    args: None,
                    with_hints: vec![],
                    version: None,
                    with_ordinality: false,
                    partitions: vec![],
                    json_path: None,
                    sample: None,
                    index_hints: vec![],
                };
                self.calls.push(call);
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

fn window_call(function: &str, args: &[FunctionArg], table_name: &str) -> Result<WindowCall> {
    let upper = function.to_ascii_uppercase();
    let expected = match function {
        "tumble" => "TUMBLE(relation, time_column, size)",
        "hop" => "HOP(relation, time_column, slide, size)",
        "session" => "SESSION(relation, time_column, gap)",
        _ => "CUMULATE(relation, time_column, step, size)",
    };
    let n_lengths = if matches!(function, "hop" | "cumulate") {
        2
    } else {
        1
    };
    if args.len() != 2 + n_lengths {
        return Err(Error::plan(format!(
            "{upper} takes {} arguments: {expected}",
            2 + n_lengths
        )));
    }
    let exprs: Vec<Expr> = args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
            | FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            } => Ok(e.clone()),
            other => Err(Error::plan(format!(
                "{upper}: unexpected argument '{other}'; expected {expected}"
            ))),
        })
        .collect::<Result<_>>()?;
    let relation = match strip_wrapper(&exprs[0], "table") {
        Expr::Identifier(i) => ObjectName::from(vec![i.clone()]),
        Expr::CompoundIdentifier(parts) => ObjectName::from(parts.clone()),
        other => {
            return Err(Error::plan(format!(
                "{upper}: the first argument must name a source or view, got '{other}'"
            )));
        }
    };
    let time_column = match strip_wrapper(&exprs[1], "descriptor") {
        Expr::Identifier(i) => i.value.clone(),
        other => {
            return Err(Error::plan(format!(
                "{upper}: the second argument must be a column name, got '{other}'"
            )));
        }
    };
    Ok(WindowCall {
        table_name: table_name.to_string(),
        function: upper,
        relation,
        time_column,
        lengths: exprs[2..].to_vec(),
    })
}

/// `DESCRIPTOR(col)` and `TABLE t` (Flink's spelling) unwrap to their argument.
fn strip_wrapper<'a>(e: &'a Expr, wrapper: &str) -> &'a Expr {
    if let Expr::Function(f) = e
        && f.name.to_string().eq_ignore_ascii_case(wrapper)
        && let FunctionArguments::List(list) = &f.args
        && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))] = list.args.as_slice()
    {
        return inner;
    }
    e
}

/// Replaces the window function calls in `query` with window tables registered in `ctx`.
/// Returns the names of the tables registered, to deregister after planning.
pub(crate) async fn rewrite_windows(
    ctx: &SessionContext,
    query: &mut Query,
    first_id: usize,
) -> Result<Vec<String>> {
    let mut finder = FindWindows {
        calls: vec![],
        error: None,
        next_id: first_id,
    };
    let _ = query.visit(&mut finder);
    if let Some(e) = finder.error {
        return Err(e);
    }
    let mut names = Vec::new();
    for call in finder.calls {
        let inner_sql = format!("SELECT * FROM {}", call.relation);
        let inner = ctx
            .state()
            .create_logical_plan(&inner_sql)
            .await
            .map_err(Error::from)?;
        let lengths = call
            .lengths
            .iter()
            .map(|e| interval_nanos(ctx, e, &call.function))
            .collect::<Result<Vec<i64>>>()?;
        let kind = match (call.function.as_str(), lengths.as_slice()) {
            ("TUMBLE", [size]) => WindowKind::Tumble { size: *size },
            ("HOP", [slide, size]) => {
                check_windows_per_row("HOP", "slide", *slide, *size)?;
                if size < slide {
                    return Err(Error::plan(format!(
                        "HOP: the size ({}) must be at least the slide ({})",
                        format_duration(*size),
                        format_duration(*slide)
                    )));
                }
                WindowKind::Hop {
                    slide: *slide,
                    size: *size,
                }
            }
            ("SESSION", [gap]) => WindowKind::Session { gap: *gap },
            ("CUMULATE", [step, size]) => {
                check_windows_per_row("CUMULATE", "step", *step, *size)?;
                if size % step != 0 {
                    return Err(Error::plan(format!(
                        "CUMULATE: the size ({}) must be a whole number of steps ({})",
                        format_duration(*size),
                        format_duration(*step)
                    )));
                }
                WindowKind::Cumulate {
                    step: *step,
                    size: *size,
                }
            }
            _ => {
                return Err(Error::Internal(format!(
                    "window call {} with {} lengths",
                    call.function,
                    lengths.len()
                )));
            }
        };
        let table = WindowTable::try_new(kind, inner, &call.time_column, &call.function)?;
        ctx.register_table(call.table_name.as_str(), Arc::new(table))
            .map_err(Error::from)?;
        names.push(call.table_name);
    }
    Ok(names)
}

/// Refuses a HOP or CUMULATE whose `size` spans more than
/// [`MAX_WINDOWS_PER_ROW`](crate::limits::MAX_WINDOWS_PER_ROW) slides or steps: each row
/// belongs to that many windows, and each window merges that many panes.
fn check_windows_per_row(function: &str, what: &str, every: i64, size: i64) -> Result<()> {
    let windows = size / every.max(1);
    if windows > crate::limits::MAX_WINDOWS_PER_ROW {
        return Err(Error::Limit(format!(
            "{function}: a size of {} over a {what} of {} puts each row in {windows} windows, over the limit of {}",
            format_duration(size),
            format_duration(every),
            crate::limits::MAX_WINDOWS_PER_ROW
        )));
    }
    Ok(())
}

/// Evaluates a constant interval expression, such as `INTERVAL '10' SECOND`, to nanoseconds.
fn interval_nanos(ctx: &SessionContext, expr: &Expr, function: &str) -> Result<i64> {
    let value = crate::constant::evaluate(
        ctx,
        ExprWithAlias {
            expr: expr.clone(),
            alias: None,
        },
        &DFSchema::empty(),
    )?;
    let nanos = match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => i64::from(v.days)
            .checked_mul(86_400_000_000_000)
            .and_then(|d| d.checked_add(v.nanoseconds)),
        ScalarValue::IntervalDayTime(Some(v)) => i64::from(v.days)
            .checked_mul(86_400_000_000_000)
            .and_then(|d| d.checked_add(i64::from(v.milliseconds) * 1_000_000)),
        ScalarValue::DurationNanosecond(Some(n)) => Some(n),
        ScalarValue::DurationMicrosecond(Some(n)) => n.checked_mul(1_000),
        ScalarValue::DurationMillisecond(Some(n)) => n.checked_mul(1_000_000),
        ScalarValue::DurationSecond(Some(n)) => n.checked_mul(1_000_000_000),
        _ => None,
    };
    match nanos {
        Some(n) if n > 0 => Ok(n),
        _ => Err(Error::plan(format!(
            "{function}: '{expr}' must be a positive interval of days or less, such as INTERVAL '10' SECOND"
        ))),
    }
}
