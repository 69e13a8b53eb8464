//! Fits a connector's own schema (nexmark, a parquet file) to the columns a user declared:
//! a declared subset is a projection; a declared type that differs is cast when the cast is
//! safe (timestamp units, integer and float widening) and a CREATE-time error otherwise.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// How to turn a batch in the connector's schema into one in the declared schema.
#[derive(Debug, Clone)]
pub struct SchemaMap {
    target: SchemaRef,
    /// For each target column: its index in the connector's schema, and whether it is cast.
    columns: Vec<(usize, bool)>,
}

impl SchemaMap {
    /// Maps `source` onto `declared`; without a declaration the source schema is used as is.
    ///
    /// # Errors
    /// When a declared column is missing from `source`, or its type cannot be reached by a
    /// safe cast. The message names the column.
    pub fn try_new(
        connector: &str,
        source: &SchemaRef,
        declared: Option<&SchemaRef>,
    ) -> Result<Self> {
        let Some(declared) = declared else {
            return Ok(Self {
                target: Arc::clone(source),
                columns: (0..source.fields().len()).map(|i| (i, false)).collect(),
            });
        };
        let mut columns = Vec::with_capacity(declared.fields().len());
        let mut fields = Vec::with_capacity(declared.fields().len());
        for field in declared.fields() {
            let (idx, src) = source.column_with_name(field.name()).ok_or_else(|| {
                let known: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
                Error::option(
                    connector,
                    format!(
                        "column '{}' does not exist in the input; it has: {}",
                        field.name(),
                        known.join(", ")
                    ),
                )
            })?;
            let cast = src.data_type() != field.data_type();
            if cast && !is_safe_cast(src.data_type(), field.data_type()) {
                return Err(Error::option(
                    connector,
                    format!(
                        "column '{}' is {} in the input and cannot be read safely as {}",
                        field.name(),
                        src.data_type(),
                        field.data_type()
                    ),
                ));
            }
            columns.push((idx, cast));
            fields.push(Field::new(field.name(), field.data_type().clone(), true));
        }
        Ok(Self {
            target: Arc::new(Schema::new(fields)),
            columns,
        })
    }

    /// The schema batches have after [`SchemaMap::apply`].
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.target)
    }

    /// Whether the map leaves batches unchanged.
    pub fn is_identity(&self, source: &SchemaRef) -> bool {
        self.columns.len() == source.fields().len()
            && self
                .columns
                .iter()
                .enumerate()
                .all(|(i, (j, c))| i == *j && !c)
    }

    /// Projects and casts a batch in the connector's schema.
    ///
    /// # Errors
    /// When a cast fails on a value.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let opts = CastOptions {
            safe: false,
            ..Default::default()
        };
        let arrays = self
            .columns
            .iter()
            .zip(self.target.fields())
            .map(|((idx, cast), field)| {
                let col = batch.column(*idx);
                if *cast {
                    cast_with_options(col, field.data_type(), &opts).map_err(Error::from)
                } else {
                    Ok(Arc::clone(col))
                }
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        Ok(RecordBatch::try_new(self.schema(), arrays)?)
    }
}

/// Casts that never lose information or fail on a value (DESIGN.md §2).
pub fn is_safe_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    match (from, to) {
        (Timestamp(_, a), Timestamp(_, b)) => a == b,
        (Int8, Int16 | Int32 | Int64 | Float32 | Float64)
        | (Int16, Int32 | Int64 | Float32 | Float64)
        | (Int32, Int64 | Float64)
        | (UInt8, UInt16 | UInt32 | UInt64 | Int16 | Int32 | Int64)
        | (UInt16, UInt32 | UInt64 | Int32 | Int64)
        | (UInt32, UInt64 | Int64)
        | (Float32, Float64)
        | (Utf8, LargeUtf8 | Utf8View)
        | (LargeUtf8, Utf8 | Utf8View)
        | (Utf8View, Utf8 | LargeUtf8)
        | (Date32, Date64 | Timestamp(_, None)) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::TimeUnit;

    #[test]
    fn projects_and_widens() {
        let src = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, false),
            Field::new("b", DataType::Utf8, true),
        ]));
        let decl = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let map = SchemaMap::try_new("t", &src, Some(&decl)).unwrap();
        let batch = RecordBatch::try_new(
            src,
            vec![
                Arc::new(Int32Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["x", "y"])),
            ],
        )
        .unwrap();
        let out = map.apply(&batch).unwrap();
        assert_eq!(out.num_columns(), 1);
        assert_eq!(out.column(0).data_type(), &DataType::Int64);
    }

    #[test]
    fn rejects_unknown_and_unsafe() {
        let src = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, None), false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let decl = Arc::new(Schema::new(vec![Field::new("nope", DataType::Int64, true)]));
        assert!(
            SchemaMap::try_new("t", &src, Some(&decl))
                .unwrap_err()
                .to_string()
                .contains("'nope'")
        );
        let decl = Arc::new(Schema::new(vec![Field::new("s", DataType::Int64, true)]));
        assert!(
            SchemaMap::try_new("t", &src, Some(&decl))
                .unwrap_err()
                .to_string()
                .contains("'s'")
        );
        let decl = Arc::new(Schema::new(vec![Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )]));
        assert!(SchemaMap::try_new("t", &src, Some(&decl)).is_ok());
    }
}
