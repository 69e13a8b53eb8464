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
