//! The catalog: the sources, views, materialized views and sinks a session has declared,
//! with the schemas and definitions planning needs. In memory; the engine persists it.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::Query;

use crate::error::{Error, Result};
use crate::statement::ObjectKind;

/// A source's event time: `WATERMARK FOR column AS expr`.
#[derive(Debug, Clone)]
pub struct WatermarkSpec {
    /// The event-time column.
    pub column: String,
    /// Its index in the source schema.
    pub column_index: usize,
    /// The one-column schema `expr` reads: the event-time column as a nanosecond timestamp.
    pub input: SchemaRef,
    /// Over a one-column batch holding the largest event time of a source batch, evaluates
    /// to the watermark candidate (a nanosecond timestamp).
    pub expr: Arc<dyn PhysicalExpr>,
    /// The clause as written.
    pub display: String,
}

/// A declared source.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    /// Name.
    pub name: String,
    /// The schema it produces.
    pub schema: SchemaRef,
    /// Its event time, if declared.
    pub watermark: Option<WatermarkSpec>,
    /// Connector name.
    pub connector: String,
    /// The `WITH` options as given.
    pub options: Vec<(String, String)>,
    /// The CREATE statement.
    pub definition: String,
}

/// A view: a named query, inlined wherever it is used.
#[derive(Debug, Clone)]
pub struct ViewEntry {
    /// Name.
    pub name: String,
    /// The query.
    pub query: Box<Query>,
    /// Its output schema.
    pub schema: SchemaRef,
    /// The CREATE statement.
    pub definition: String,
}

/// A materialized view: a continuous query whose results are kept and queryable.
#[derive(Debug, Clone)]
pub struct MaterializedViewEntry {
    /// Name.
    pub name: String,
    /// Its output schema.
    pub schema: SchemaRef,
    /// The CREATE statement.
    pub definition: String,
}

/// A sink: a continuous query writing to a connector.
#[derive(Debug, Clone)]
pub struct SinkEntry {
    /// Name.
    pub name: String,
    /// Connector name.
    pub connector: String,
    /// The schema written.
    pub schema: SchemaRef,
    /// The CREATE statement.
    pub definition: String,
}

/// Every object a session knows. Sources, views and materialized views share one namespace
/// (they are all relations); sinks have their own.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sources by name.
    pub sources: BTreeMap<String, SourceEntry>,
    /// Views in creation order (a view may use the ones before it).
    pub views: Vec<ViewEntry>,
    /// Materialized views by name.
    pub materialized_views: BTreeMap<String, MaterializedViewEntry>,
    /// Sinks by name.
    pub sinks: BTreeMap<String, SinkEntry>,
}

impl Catalog {
    /// What kind of relation `name` is, if any.
    pub fn relation_kind(&self, name: &str) -> Option<ObjectKind> {
        if self.sources.contains_key(name) {
            Some(ObjectKind::Source)
        } else if self.views.iter().any(|v| v.name == name) {
            Some(ObjectKind::View)
        } else if self.materialized_views.contains_key(name) {
            Some(ObjectKind::MaterializedView)
        } else {
            None
        }
    }

    /// Fails when `name` is taken in the namespace of `kind`.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] naming what holds the name.
    pub fn check_free(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let taken = match kind {
            ObjectKind::Sink => self.sinks.contains_key(name).then_some(ObjectKind::Sink),
            _ => self.relation_kind(name),
        };
        match taken {
            Some(k) => Err(Error::AlreadyExists {
                kind: kind_name(k),
                name: name.to_string(),
            }),
            None => Ok(()),
        }
    }

    /// The view named `name`.
    pub fn view(&self, name: &str) -> Option<&ViewEntry> {
        self.views.iter().find(|v| v.name == name)
    }

    /// Removes an object.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is no such object and `if_exists` is false.
    pub fn drop_object(&mut self, kind: ObjectKind, name: &str, if_exists: bool) -> Result<bool> {
        let removed = match kind {
            ObjectKind::Source => self.sources.remove(name).is_some(),
            ObjectKind::Sink => self.sinks.remove(name).is_some(),
            ObjectKind::MaterializedView => self.materialized_views.remove(name).is_some(),
            ObjectKind::View => {
                let before = self.views.len();
                self.views.retain(|v| v.name != name);
                self.views.len() != before
            }
        };
        if !removed && !if_exists {
            return Err(Error::NotFound {
                kind: kind_name(kind),
                name: name.to_string(),
            });
        }
        Ok(removed)
    }
}

/// A static name for a kind, for error messages.
pub fn kind_name(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Source => "source",
        ObjectKind::Sink => "sink",
        ObjectKind::View => "view",
        ObjectKind::MaterializedView => "materialized view",
    }
}
