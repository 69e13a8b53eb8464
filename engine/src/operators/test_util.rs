//! Readable text batches for operator tests: `batch("a:i64,t:ts", &["1,10", "2,20"])`
//! builds a batch (timestamps given in seconds), `rows(...)` prints batches back as lines.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::DFSchema;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

/// A batch from a column spec (`name:type`, types i64, f64, str, ts) and CSV-ish rows;
/// an empty field is NULL, `ts` values are seconds.
pub fn batch(spec: &str, rows: &[&str]) -> RecordBatch {
    let cols: Vec<(&str, &str)> = spec
        .split(',')
        .map(|c| c.split_once(':').unwrap())
        .collect();
    let fields: Vec<Field> = cols
        .iter()
        .map(|(n, t)| {
            let dt = match *t {
                "i64" => DataType::Int64,
                "f64" => DataType::Float64,
                "str" => DataType::Utf8,
                "ts" => DataType::Timestamp(TimeUnit::Nanosecond, None),
                other => panic!("unknown type {other}"),
            };
            Field::new(*n, dt, true)
        })
        .collect();
    let cells: Vec<Vec<&str>> = rows.iter().map(|r| r.split(',').collect()).collect();
    let arrays: Vec<ArrayRef> = cols
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let col = cells.iter().map(|r| Some(r[i]).filter(|s| !s.is_empty()));
            match *t {
                "i64" => Arc::new(
                    col.map(|v| v.map(|v| v.parse::<i64>().unwrap()))
                        .collect::<Int64Array>(),
                ) as ArrayRef,
                "f64" => Arc::new(
                    col.map(|v| v.map(|v| v.parse::<f64>().unwrap()))
                        .collect::<Float64Array>(),
                ) as ArrayRef,
                "str" => Arc::new(col.collect::<StringArray>()) as ArrayRef,
                _ => Arc::new(
                    col.map(|v| v.map(|v| v.parse::<i64>().unwrap() * 1_000_000_000))
                        .collect::<TimestampNanosecondArray>(),
                ) as ArrayRef,
            }
        })
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
}

/// Every row of `batches` as a comma-separated line; timestamps print as seconds.
pub fn pretty(batches: Vec<RecordBatch>) -> Vec<String> {
    let mut out = Vec::new();
    for b in &batches {
        let cols: Vec<ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                    let ts = c
                        .as_any()
                        .downcast_ref::<TimestampNanosecondArray>()
                        .unwrap();
                    Arc::new(
                        ts.iter()
                            .map(|v| v.map(|v| v / 1_000_000_000))
                            .collect::<Int64Array>(),
                    ) as ArrayRef
                }
                _ => Arc::clone(c),
            })
            .collect();
        let opts = FormatOptions::default();
        let fmts: Vec<ArrayFormatter> = cols
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    out
}

/// A physical expression over `schema`.
pub fn physical(expr: Expr, schema: &SchemaRef) -> Arc<dyn PhysicalExpr> {
    let df = DFSchema::try_from(schema.as_ref().clone()).unwrap();
    SessionContext::new()
        .create_physical_expr(expr, &df)
        .unwrap()
}

/// Plans `query` over a source `t (k BIGINT, v BIGINT, ts TIMESTAMP)` with event time `ts`
/// and returns its windowed aggregate: the spec, its input schema and its output schema.
pub async fn window_spec(
    query: &str,
) -> (sluice_planner::plan::WindowAggregate, SchemaRef, SchemaRef) {
    use sluice_planner::{Catalog, Planner, SourceEntry, Statement};
    let create = sluice_planner::parse_one("CREATE SOURCE t (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (connector = 'x')").unwrap();
    let Statement::CreateSource {
        columns, watermark, ..
    } = create.statement
    else {
        panic!("not a source")
    };
    let schema = sluice_planner::columns_schema(&columns).await.unwrap();
    let watermark = Some(sluice_planner::plan_watermark(&schema, &watermark.unwrap()).unwrap());
    let mut catalog = Catalog::default();
    catalog.sources.insert(
        "t".into(),
        SourceEntry {
            name: "t".into(),
            schema,
            watermark,
            connector: "x".into(),
            options: vec![],
            definition: String::new(),
        },
    );
    let Statement::Query(q) = sluice_planner::parse_one(query).unwrap().statement else {
        panic!("not a query")
    };
    let plan = Planner::new(&catalog).plan_query(&q).await.unwrap();
    let node = plan
        .nodes
        .iter()
        .find(|n| matches!(n.op, sluice_planner::StreamOp::WindowAggregate(_)))
        .unwrap();
    let sluice_planner::StreamOp::WindowAggregate(spec) = &node.op else {
        unreachable!()
    };
    let input = Arc::clone(&plan.nodes[node.inputs[0].from].schema);
    (spec.clone(), input, Arc::clone(&node.schema))
}

/// Feeds `op` a script of steps: `Batch(rows)` in the `k:i64,v:i64,ts:ts` layout the planner
/// gives the window input, or `Watermark(seconds)`; returns what each step emitted.
pub fn drive(
    op: &mut dyn crate::operator::Operator,
    input: &SchemaRef,
    steps: &[Step],
) -> Vec<Vec<String>> {
    use crate::operator::Output;
    steps
        .iter()
        .map(|step| {
            let mut out = Output::default();
            match step {
                Step::Batch(rows) => {
                    let b = batch("k:i64,v:i64,ts:ts", rows);
                    // The window input carries the event time in its window_start column.
                    let cols: Vec<ArrayRef> = input
                        .fields()
                        .iter()
                        .map(|f| match f.name().as_str() {
                            "k" => Arc::clone(b.column(0)),
                            "v" => Arc::clone(b.column(1)),
                            _ => Arc::clone(b.column(2)),
                        })
                        .collect();
                    op.process_batch(
                        0,
                        RecordBatch::try_new(Arc::clone(input), cols).unwrap(),
                        &mut out,
                    )
                    .unwrap();
                }
                Step::Watermark(s) => op.process_watermark(s * 1_000_000_000, &mut out).unwrap(),
            }
            let mut rows = pretty(out.drain().collect());
            rows.sort();
            rows
        })
        .collect()
}

/// One step of [`drive`].
pub enum Step {
    /// Rows `k,v,ts_seconds`.
    Batch(&'static [&'static str]),
    /// A watermark, in seconds.
    Watermark(i64),
}
