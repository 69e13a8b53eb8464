//! The session's answers about itself: SHOW (sources, sinks, views, materialized views,
//! checkpoints), DESCRIBE, and the small text tables they are returned as.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use sluice_planner::ObjectKind;

use super::{Session, StatementOutput};
use crate::error::Result;
use crate::runtime::PipelineStatus;

/// A table of text columns, one batch.
pub(super) fn text_batch(
    columns: &[&str],
    rows: Vec<Vec<String>>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(*c, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> = (0..columns.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|r| r.get(i).cloned())
                    .collect::<StringArray>(),
            ) as ArrayRef
        })
        .collect();
    let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
    Ok((schema, vec![batch]))
}

impl Session {
    /// `SHOW CHECKPOINTS`: every complete checkpoint of every sink and materialized view.
    pub(super) async fn show_checkpoints(&self) -> Result<StatementOutput> {
        let mut rows = Vec::new();
        if let Some(config) = &self.checkpoints {
            let mut names: Vec<&String> = self.catalog.sinks.keys().collect();
            names.extend(self.catalog.materialized_views.keys());
            names.sort();
            for name in names {
                for m in config.store_for(name).manifests().await? {
                    let completed = i64::try_from(m.completed_unix_ms)
                        .ok()
                        .and_then(datafusion::arrow::temporal_conversions::timestamp_ms_to_datetime)
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string())
                        .unwrap_or_default();
                    let kind = match (m.last, m.stopped) {
                        (false, _) => "periodic",
                        (true, true) => "last (stopped)",
                        (true, false) => "last (input ended)",
                    };
                    rows.push(vec![
                        name.clone(),
                        m.id.to_string(),
                        completed,
                        m.duration_ms.to_string(),
                        m.state_bytes().to_string(),
                        kind.to_string(),
                    ]);
                }
            }
        }
        let (schema, batches) = text_batch(
            &[
                "pipeline",
                "checkpoint",
                "completed_at",
                "duration_ms",
                "state_bytes",
                "kind",
            ],
            rows,
        )?;
        Ok(StatementOutput::Rows { schema, batches })
    }

    fn status_text(&self, name: &str) -> String {
        match self.pipeline(name).map(|p| p.status()) {
            Some(PipelineStatus::Running) => "running".into(),
            Some(PipelineStatus::Finished) => "finished".into(),
            Some(PipelineStatus::Stopped) => "stopped".into(),
            Some(PipelineStatus::Failed(e)) => format!("failed: {e}"),
            None if self.finished_restored.contains(name) => "finished (restored)".into(),
            None => "-".into(),
        }
    }

    pub(super) fn show(&self, kind: ObjectKind) -> Result<StatementOutput> {
        let (schema, batches) = match kind {
            ObjectKind::Source => text_batch(
                &["name", "connector", "watermark"],
                self.catalog
                    .sources
                    .values()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.connector.clone(),
                            s.watermark
                                .as_ref()
                                .map(|w| w.display.clone())
                                .unwrap_or_default(),
                        ]
                    })
                    .collect(),
            )?,
            ObjectKind::Sink => text_batch(
                &["name", "connector", "status", "rows_out"],
                self.catalog
                    .sinks
                    .values()
                    .map(|s| {
                        let rows = self
                            .pipeline(&s.name)
                            .map(|p| p.metrics.snapshot().rows_out)
                            .unwrap_or(0);
                        vec![
                            s.name.clone(),
                            s.connector.clone(),
                            self.status_text(&s.name),
                            rows.to_string(),
                        ]
                    })
                    .collect(),
            )?,
            ObjectKind::View => text_batch(
                &["name"],
                self.catalog
                    .views
                    .iter()
                    .map(|v| vec![v.name.clone()])
                    .collect(),
            )?,
            ObjectKind::MaterializedView => text_batch(
                &["name", "status", "rows"],
                self.catalog
                    .materialized_views
                    .values()
                    .map(|m| {
                        let rows = self.views.get(&m.name).map(|v| v.num_rows()).unwrap_or(0);
                        vec![m.name.clone(), self.status_text(&m.name), rows.to_string()]
                    })
                    .collect(),
            )?,
        };
        Ok(StatementOutput::Rows { schema, batches })
    }

    pub(super) fn describe(&self, name: &str) -> Result<StatementOutput> {
        let schema = if let Some(s) = self.catalog.sources.get(name) {
            Arc::clone(&s.schema)
        } else if let Some(v) = self.catalog.view(name) {
            Arc::clone(&v.schema)
        } else if let Some(m) = self.catalog.materialized_views.get(name) {
            Arc::clone(&m.schema)
        } else if let Some(s) = self.catalog.sinks.get(name) {
            Arc::clone(&s.schema)
        } else {
            return Err(sluice_planner::Error::NotFound {
                kind: "relation",
                name: name.to_string(),
            }
            .into());
        };
        let wm = self
            .catalog
            .sources
            .get(name)
            .and_then(|s| s.watermark.clone());
        let rows = schema
            .fields()
            .iter()
            .map(|f| {
                let is_wm = wm.as_ref().is_some_and(|w| &w.column == f.name());
                vec![
                    f.name().clone(),
                    sql_type(f.data_type()),
                    if f.is_nullable() { "YES" } else { "NO" }.to_string(),
                    if is_wm {
                        wm.as_ref().map(|w| w.display.clone()).unwrap_or_default()
                    } else {
                        String::new()
                    },
                ]
            })
            .collect();
        let (schema, batches) = text_batch(
            &["column_name", "data_type", "is_nullable", "watermark"],
            rows,
        )?;
        Ok(StatementOutput::Rows { schema, batches })
    }
}

/// The SQL spelling of an Arrow type, for DESCRIBE.
fn sql_type(dt: &DataType) -> String {
    match dt {
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            format!("{dt}").to_uppercase()
        }
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        DataType::Timestamp(_, Some(tz)) => format!("TIMESTAMP WITH TIME ZONE ({tz})"),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        other => other.to_string(),
    }
}
