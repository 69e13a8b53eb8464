//! A session: executes the statements of the dialect against a catalog, starting a
//! pipeline for every sink, materialized view and continuous query, and answering
//! SHOW, DESCRIBE, EXPLAIN and queries over materialized views.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::MemTable;
use datafusion::sql::sqlparser::ast::Query;
use sluice_connectors::{ConnectorMetrics, Options};
use sluice_planner::catalog::{MaterializedViewEntry, SourceEntry, ViewEntry};
use sluice_planner::{Catalog, ObjectKind, ParsedStatement, Planner, Statement, StreamPlan};
use tokio::sync::mpsc;

use crate::catalog_store::CatalogStore;
use crate::checkpoint::CheckpointConfig;
use crate::checkpoint::recovery::commit_restored;
use crate::error::{Error, Result};
use crate::runtime::Checkpointing;
use crate::runtime::{Pipeline, PipelineStatus, SinkTarget, SourceBinding};
use crate::view::{ChannelSink, ViewSink, ViewStore};

pub mod query;
mod show;
mod sink;
use show::text_batch;

pub use sink::{CONNECT_TIMEOUT, ConnectedSink, PreparedSink, execute_shared};

/// What a statement produced.
pub enum StatementOutput {
    /// A statement that changed the catalog; the message says what it did.
    Done(String),
    /// Rows: SHOW, DESCRIBE, EXPLAIN, or a query over materialized views.
    Rows {
        /// Their schema.
        schema: SchemaRef,
        /// The rows.
        batches: Vec<RecordBatch>,
    },
    /// An ad-hoc query over materialized views, running in DataFusion under the session's
    /// query memory limit: its rows as they are computed. Dropping the stream cancels it.
    Query {
        /// Their schema.
        schema: SchemaRef,
        /// The result batches.
        stream: datafusion::physical_plan::SendableRecordBatchStream,
    },
    /// A continuous query's results, as they are produced.
    Stream {
        /// Their schema.
        schema: SchemaRef,
        /// The result batches; the channel closes when the query ends.
        rows: mpsc::Receiver<RecordBatch>,
        /// The pipeline running it.
        pipeline: String,
    },
}

/// One engine session: a catalog and the pipelines started from it.
#[derive(Debug, Default)]
pub struct Session {
    catalog: Catalog,
    sources: HashMap<String, SourceBinding>,
    pipelines: Vec<Pipeline>,
    views: HashMap<String, Arc<ViewStore>>,
    queries: usize,
    settle: bool,
    /// Rows of materialized views saved at the last clean stop, until their CREATE is
    /// replayed.
    restored_views: HashMap<String, Vec<RecordBatch>>,
    /// Materialized views whose rows were restored complete (no pipeline runs for them).
    finished_restored: std::collections::HashSet<String>,
    /// CREATE statements of the live objects, in creation order: (kind, name, sql).
    definitions: Vec<(ObjectKind, String, String)>,
    /// Stored CREATE statements that failed to run again at restore (a database down, an
    /// option a newer version refuses): kept in the catalog, after the live ones, to be
    /// tried at the next start, until a CREATE or a DROP of the same name replaces them.
    held: Vec<(ObjectKind, String, String)>,
    store: Option<CatalogStore>,
    /// Checkpointing of sink and materialized-view pipelines, when on.
    checkpoints: Option<CheckpointConfig>,
    /// The memory an ad-hoc query may use (its operators and its result), in bytes;
    /// `None` until set: [`query::DEFAULT_QUERY_MEMORY`].
    query_memory: Option<usize>,
    /// The state memory limit of every pipeline, in bytes (`--max-state-mib`).
    max_state_bytes: Option<u64>,
}

impl std::fmt::Debug for StatementOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatementOutput::Done(m) => f.debug_tuple("Done").field(m).finish(),
            StatementOutput::Rows { schema, batches } => f
                .debug_struct("Rows")
                .field("schema", schema)
                .field("batches", batches)
                .finish(),
            StatementOutput::Query { schema, .. } => {
                f.debug_struct("Query").field("schema", schema).finish()
            }
            StatementOutput::Stream { pipeline, .. } => {
                f.debug_struct("Stream").field("pipeline", pipeline).finish()
            }
        }
    }
}

/// The name of a continuous query's pipeline: this prefix and a number.
const QUERY_PREFIX: &str = "query-";

/// The kind and name of what a CREATE statement makes.
fn created(stmt: &ParsedStatement) -> Option<(ObjectKind, &String)> {
    match &stmt.statement {
        Statement::CreateSource { name, .. } => Some((ObjectKind::Source, name)),
        Statement::CreateSink { name, .. } => Some((ObjectKind::Sink, name)),
        Statement::CreateView {
            name,
            materialized: true,
            ..
        } => Some((ObjectKind::MaterializedView, name)),
        Statement::CreateView { name, .. } => Some((ObjectKind::View, name)),
        _ => None,
    }
}

fn options_of(kind: &str, name: &str, options: &[(String, String)]) -> Result<(String, Options)> {
    let connector = options
        .iter()
        .find(|(k, _)| k == "connector")
        .map(|(_, v)| v.to_ascii_lowercase())
        .ok_or_else(|| {
            sluice_planner::Error::plan(format!("{kind} '{name}' needs WITH (connector = '...')"))
        })?;
    let rest = options.iter().filter(|(k, _)| k != "connector").cloned();
    Ok((connector.clone(), Options::new(connector, rest)))
}

impl Session {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes queries over materialized views wait until every pipeline over bounded
    /// sources has finished, so a script's answers do not depend on timing (`sluice run`,
    /// sqllogictests).
    pub fn settle_before_queries(&mut self, settle: bool) {
        self.settle = settle;
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Every pipeline started so far.
    pub fn pipelines(&self) -> &[Pipeline] {
        &self.pipelines
    }

    /// Parses and runs a script, statement by statement.
    ///
    /// # Errors
    /// The first failing statement's error, naming the statement and its line.
    pub async fn execute_script(&mut self, sql: &str) -> Result<Vec<StatementOutput>> {
        let statements = sluice_planner::parse_script(sql)?;
        let mut out = Vec::with_capacity(statements.len());
        for s in &statements {
            out.push(self.execute(s).await?);
        }
        Ok(out)
    }

    /// Runs one parsed statement.
    ///
    /// # Errors
    /// The statement's error, wrapped with where the statement stands.
    pub async fn execute(&mut self, stmt: &ParsedStatement) -> Result<StatementOutput> {
        let at = |e| Error::AtStatement {
            at: stmt.locator(),
            source: Box::new(e),
        };
        let out = self.execute_inner(stmt).await.map_err(at)?;
        if self.record_definition(stmt) {
            self.persist().await.map_err(at)?;
        }
        Ok(out)
    }

    /// Keeps the catalog to persist (CREATE statements of live objects) in step with a
    /// statement that succeeded. Returns whether it changed.
    fn record_definition(&mut self, stmt: &ParsedStatement) -> bool {
        if let Statement::Drop { kind, name, .. } = &stmt.statement {
            let before = self.definitions.len() + self.held.len();
            self.definitions
                .retain(|(k, n, _)| !(k == kind && n == name));
            self.held.retain(|(k, n, _)| !(k == kind && n == name));
            return self.definitions.len() + self.held.len() != before;
        }
        let Some((kind, name)) = created(stmt) else {
            return false;
        };
        // A new definition replaces one held back at restore.
        let held = self.held.len();
        self.held.retain(|(k, n, _)| !(*k == kind && n == name));
        let replaced_held = self.held.len() != held;
        if let Some(existing) = self
            .definitions
            .iter_mut()
            .find(|(k, n, _)| *k == kind && n == name)
        {
            // IF NOT EXISTS keeps the first definition; OR REPLACE replaces it in place.
            if matches!(
                stmt.statement,
                Statement::CreateView {
                    or_replace: true,
                    ..
                }
            ) {
                existing.2 = stmt.sql.clone();
                return true;
            }
            return replaced_held;
        }
        self.definitions
            .push((kind, name.clone(), stmt.sql.clone()));
        true
    }

    async fn persist(&self) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let script: Vec<String> = self
            .definitions
            .iter()
            .chain(&self.held)
            .map(|(_, _, sql)| format!("{};\n", sql.trim_end_matches(';')))
            .collect();
        store.save(&script.join("\n")).await
    }

    /// Keeps the catalog in `store` from now on, after restoring what it holds: every stored
    /// statement is run again, so sources, views, sinks and materialized views (and their
    /// pipelines) come back. Returns how many statements were restored. A statement that
    /// fails (a database down at start, an option this version refuses) is logged and kept
    /// in the catalog, to be tried again at the next start, until a CREATE or a `DROP ...
    /// IF EXISTS` of its name replaces it: a restart never loses a definition.
    ///
    /// # Errors
    /// When the stored catalog cannot be read or parsed.
    pub async fn restore_from(&mut self, store: CatalogStore) -> Result<usize> {
        let script = store.load().await?;
        self.store = Some(store);
        let Some(script) = script else { return Ok(0) };
        let statements = sluice_planner::parse_script(&script)?;
        if let Some(store) = &self.store {
            for stmt in &statements {
                if let Statement::CreateView {
                    name,
                    materialized: true,
                    ..
                } = &stmt.statement
                {
                    match store.load_view(name).await {
                        Ok(Some(rows)) => {
                            self.restored_views.insert(name.clone(), rows);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(view = %name, error = %e, "cannot load a materialized view's rows; recomputing it")
                        }
                    }
                }
            }
        }
        let mut restored = 0;
        for stmt in &statements {
            match self.execute(stmt).await {
                Ok(_) => restored += 1,
                Err(e) => {
                    tracing::error!(statement = %stmt.sql, error = %e, "cannot restore a catalog statement; it stays in the catalog for the next start (DROP ... IF EXISTS removes it)");
                    if let Some((kind, name)) = created(stmt) {
                        self.held.push((kind, name.clone(), stmt.sql.clone()));
                    }
                }
            }
        }
        self.persist().await?;
        Ok(restored)
    }

    /// The latest pipeline named `name`.
    pub fn pipeline(&self, name: &str) -> Option<&Pipeline> {
        self.pipelines.iter().rev().find(|p| p.name == name)
    }

    async fn execute_inner(&mut self, stmt: &ParsedStatement) -> Result<StatementOutput> {
        match &stmt.statement {
            Statement::CreateSource {
                name,
                columns,
                watermark,
                options,
                if_not_exists,
            } => {
                if *if_not_exists && self.catalog.sources.contains_key(name) {
                    return Ok(StatementOutput::Done(format!("source '{name}' exists")));
                }
                self.catalog.check_free(ObjectKind::Source, name)?;
                let declared = if columns.is_empty() {
                    None
                } else {
                    Some(sluice_planner::columns_schema(columns).await?)
                };
                let (connector, options) = options_of("source", name, options)?;
                let decl = sluice_connectors::source_decl(&connector, options, declared).await?;
                let schema = decl.schema();
                let watermark = watermark
                    .as_ref()
                    .map(|w| sluice_planner::plan_watermark(&schema, w))
                    .transpose()?;
                self.catalog.sources.insert(
                    name.clone(),
                    SourceEntry {
                        name: name.clone(),
                        schema,
                        watermark: watermark.clone(),
                        connector,
                        options: stmt_options(&stmt.statement),
                        definition: stmt.sql.clone(),
                    },
                );
                self.sources
                    .insert(name.clone(), SourceBinding { decl, watermark });
                Ok(StatementOutput::Done(format!("created source '{name}'")))
            }
            Statement::CreateSink { .. } => {
                let connected = self.prepare_sink(stmt).await?.connect().await?;
                self.finish_sink(connected)
            }
            Statement::CreateView {
                name,
                query,
                materialized: false,
                or_replace,
                ..
            } => {
                if *or_replace && self.catalog.view(name).is_some() {
                    self.catalog.drop_object(ObjectKind::View, name, true)?;
                }
                self.catalog.check_free(ObjectKind::View, name)?;
                let schema = Planner::new(&self.catalog).query_schema(query).await?;
                self.catalog.views.push(ViewEntry {
                    name: name.clone(),
                    query: query.clone(),
                    schema,
                    definition: stmt.sql.clone(),
                });
                Ok(StatementOutput::Done(format!("created view '{name}'")))
            }
            Statement::CreateView {
                name,
                query,
                materialized: true,
                options,
                ..
            } => {
                self.catalog
                    .check_free(ObjectKind::MaterializedView, name)?;
                let mut opts = Options::new("materialized view", options.iter().cloned());
                let retention = opts.take_duration("retention")?;
                let max_state = opts.take_u64("max_state_mib")?.map(|m| m.saturating_mul(1 << 20));
                opts.finish()?;
                let plan = Planner::new(&self.catalog).plan_view_query(query).await?;
                let schema = plan.schema();
                if plan.is_updating() && retention.is_some() {
                    return Err(sluice_planner::Error::plan(format!(
                        "materialized view '{name}': retention applies to append-only views; this one keeps the latest row per key"
                    ))
                    .into());
                }
                let store = Arc::new(
                    ViewStore::new(Arc::clone(&schema), retention).replacing(plan.is_updating()),
                );
                match self.restored_views.remove(name) {
                    // The view's bounded input was fully consumed before a restart: its
                    // rows come back as they were, without running the query again.
                    Some(rows) if rows.first().is_none_or(|b| b.schema() == schema) => {
                        let mut sink = ViewSink::new(Arc::clone(&store));
                        for batch in rows {
                            sluice_connectors::Sink::write(&mut sink, batch).await?;
                        }
                        self.finished_restored.insert(name.clone());
                    }
                    _ => {
                        let recovery = recover(self.checkpoints.as_ref(), name, None).await?;
                        if let Some(r) = recovery.as_ref().and_then(|c| c.restored.as_ref()) {
                            store.load(r.sink_state.clone());
                        }
                        if recovery.as_ref().is_some_and(Checkpointing::finished) {
                            self.finished_restored.insert(name.clone());
                        } else {
                            let sink = Box::new(ViewSink::new(Arc::clone(&store)));
                            self.start(name, plan, sink, None, recovery, max_state)?;
                        }
                    }
                }
                self.views.insert(name.clone(), store);
                self.catalog.materialized_views.insert(
                    name.clone(),
                    MaterializedViewEntry {
                        name: name.clone(),
                        schema,
                        definition: stmt.sql.clone(),
                    },
                );
                Ok(StatementOutput::Done(format!(
                    "created materialized view '{name}'"
                )))
            }
            Statement::Drop {
                kind,
                name,
                if_exists,
            } => {
                let pipeline_kind = matches!(kind, ObjectKind::Sink | ObjectKind::MaterializedView);
                let exists = match kind {
                    ObjectKind::Sink => self.catalog.sinks.contains_key(name),
                    ObjectKind::MaterializedView => {
                        self.catalog.materialized_views.contains_key(name)
                    }
                    _ => false,
                };
                if exists {
                    // Let the pipeline end (its last checkpoint included) before its
                    // checkpoints go, so that nothing is left for a new object of that name.
                    for p in self.pipelines.iter().filter(|p| p.name == *name) {
                        p.stop();
                        let _ = p.wait().await;
                    }
                }
                let out = self.drop_object(*kind, name, *if_exists)?;
                if pipeline_kind {
                    self.finished_restored.remove(name);
                    if let Some(config) = &self.checkpoints {
                        config.store_for(name).delete_all().await?;
                    }
                }
                Ok(out)
            }
            Statement::Show(kind) => self.show(*kind),
            Statement::ShowCheckpoints => self.show_checkpoints().await,
            Statement::Describe(name) => self.describe(name),
            Statement::Explain(query) => {
                let plan = Planner::new(&self.catalog).plan_view_query(query).await?;
                let lines: Vec<Vec<String>> = plan
                    .to_string()
                    .lines()
                    .map(|l| vec![l.to_string()])
                    .collect();
                let (schema, batches) = text_batch(&["plan"], lines)?;
                Ok(StatementOutput::Rows { schema, batches })
            }
            Statement::Query(query) => self.query(query).await,
            Statement::Copy => self.copy(&stmt.sql).await,
        }
    }

    fn start(
        &mut self,
        name: &str,
        plan: StreamPlan,
        sink: Box<dyn sluice_connectors::Sink>,
        metrics: Option<Arc<ConnectorMetrics>>,
        checkpointing: Option<Checkpointing>,
        max_state: Option<u64>,
    ) -> Result<()> {
        let max_state = max_state.or(self.max_state_bytes);
        let pipeline = Pipeline::start(
            name,
            plan,
            &self.sources,
            SinkTarget { sink, metrics },
            checkpointing,
            max_state,
        )?;
        self.pipelines.push(pipeline);
        Ok(())
    }

    /// Checkpoints pipelines from now on, under `config`'s storage root.
    pub fn enable_checkpoints(&mut self, config: CheckpointConfig) {
        self.checkpoints = Some(config);
    }

    /// A top-level query: continuous over streams, or answered now from materialized views.
    async fn query(&mut self, query: &Query) -> Result<StatementOutput> {
        let mut names = Vec::new();
        let _ = datafusion::sql::sqlparser::ast::visit_relations(query, |r| {
            names.push(r.to_string().to_ascii_lowercase());
            ControlFlow::<()>::Continue(())
        });
        let kinds: Vec<Option<ObjectKind>> = names
            .iter()
            .map(|n| self.catalog.relation_kind(n))
            .collect();
        let reads_views = kinds.contains(&Some(ObjectKind::MaterializedView));
        let reads_streams = kinds
            .iter()
            .any(|k| matches!(k, Some(ObjectKind::Source | ObjectKind::View)));
        if reads_views && !reads_streams {
            if self.settle {
                self.wait_bounded().await?;
            }
            return self.ad_hoc(query).await;
        }
        let plan = Planner::new(&self.catalog).plan_query(query).await?;
        let schema = plan.schema();
        let (tx, rx) = mpsc::channel(crate::runtime::CHANNEL_CAPACITY);
        // Ad-hoc query pipelines that ended are forgotten; the running ones stay listed.
        self.pipelines.retain(|p| {
            !(p.name.starts_with(QUERY_PREFIX) && p.status() != PipelineStatus::Running)
        });
        self.queries += 1;
        let name = format!("{QUERY_PREFIX}{}", self.queries);
        self.start(&name, plan, Box::new(ChannelSink::new(tx)), None, None, None)?;
        Ok(StatementOutput::Stream {
            schema,
            rows: rx,
            pipeline: name,
        })
    }

    /// Sets the memory each pipeline's state may hold, in bytes; past it the pipeline fails.
    /// A statement's `max_state_mib` option overrides it for its pipeline.
    pub fn set_max_state_bytes(&mut self, bytes: Option<u64>) {
        self.max_state_bytes = bytes;
    }

    /// Sets the memory an ad-hoc query may use, in bytes.
    pub fn set_query_memory_limit(&mut self, bytes: usize) {
        self.query_memory = Some(bytes);
    }

    fn query_memory(&self) -> usize {
        self.query_memory.unwrap_or(query::DEFAULT_QUERY_MEMORY)
    }

    /// A DataFusion context where every materialized view is a table of its current rows,
    /// whose operators share a memory pool of the session's query memory limit.
    /// With `micros`, timestamps read as microseconds (COPY writes what Spark and Hive read).
    async fn ad_hoc_context(
        &self,
        micros: bool,
    ) -> Result<datafusion::execution::context::SessionContext> {
        let runtime = query::runtime(self.query_memory())?;
        let ctx = Planner::new(&self.catalog).context_in(Some(runtime)).await?;
        for (name, store) in &self.views {
            ctx.deregister_table(name.as_str())?;
            let table = if micros {
                let (schema, rows) = timestamps_as_micros(&store.schema(), store.snapshot())?;
                MemTable::try_new(schema, vec![rows])?
            } else {
                MemTable::try_new(store.schema(), vec![store.snapshot()])?
            };
            ctx.register_table(name.as_str(), Arc::new(table))?;
        }
        Ok(ctx)
    }

    /// Plans a query over materialized views against their current rows; the caller runs
    /// it by reading the stream (without the session).
    async fn ad_hoc(&self, query: &Query) -> Result<StatementOutput> {
        let ctx = self.ad_hoc_context(false).await?;
        let df = ctx.sql(&query.to_string()).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let stream = df.execute_stream().await?;
        Ok(StatementOutput::Query {
            schema,
            stream: query::bounded(stream, self.query_memory()),
        })
    }

    /// `COPY (query) TO 'url'`: DataFusion runs it over the current state of the
    /// materialized views, writing to a local path or an object_store URL.
    async fn copy(&self, sql: &str) -> Result<StatementOutput> {
        if self.settle {
            self.wait_bounded().await?;
        }
        let ctx = self.ad_hoc_context(true).await?;
        let sql = copy_format_to_stored_as(sql);
        if let Some(url) = copy_target(&sql).filter(|u| u.contains("://")) {
            let location = sluice_connectors::store::resolve(&url, &[])?;
            if let Ok(parsed) = url::Url::parse(&url) {
                ctx.register_object_store(&parsed, location.store);
            }
        }
        let batches = ctx.sql(&sql).await?.collect().await?;
        let rows: u64 = batches
            .iter()
            .filter_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                    .map(|a| a.iter().flatten().sum::<u64>())
            })
            .sum();
        Ok(StatementOutput::Done(format!("copied {rows} rows")))
    }

    fn drop_object(
        &mut self,
        kind: ObjectKind,
        name: &str,
        if_exists: bool,
    ) -> Result<StatementOutput> {
        if kind == ObjectKind::Source
            && let Some(user) = self
                .pipelines
                .iter()
                .find(|p| p.status() == PipelineStatus::Running && p.plan.sources().contains(&name))
        {
            return Err(sluice_planner::Error::plan(format!(
                "source '{name}' is read by the running pipeline '{}'; drop that first",
                user.name
            ))
            .into());
        }
        let removed = self.catalog.drop_object(kind, name, if_exists)?;
        if matches!(kind, ObjectKind::Sink | ObjectKind::MaterializedView) {
            for p in self.pipelines.iter().filter(|p| p.name == name) {
                p.stop();
            }
            self.pipelines
                .retain(|p| p.name != name || p.status() == PipelineStatus::Running);
            self.views.remove(name);
        }
        if kind == ObjectKind::Source {
            self.sources.remove(name);
        }
        Ok(StatementOutput::Done(if removed {
            format!("dropped {kind} '{name}'")
        } else {
            format!("{kind} '{name}' does not exist")
        }))
    }

    /// Waits for every pipeline over bounded sources to finish.
    ///
    /// # Errors
    /// The first pipeline error, as soon as any pipeline fails.
    pub async fn wait_bounded(&self) -> Result<()> {
        futures::future::try_join_all(
            self.pipelines
                .iter()
                .filter(|p| p.bounded)
                .map(|p| p.wait()),
        )
        .await
        .map(drop)
    }

    /// Waits until every pipeline has ended, or one has failed.
    ///
    /// # Errors
    /// The first pipeline error, as soon as any pipeline fails: one failed pipeline ends the
    /// wait even while others run on.
    pub async fn wait_all(&self) -> Result<()> {
        futures::future::try_join_all(self.pipelines.iter().map(|p| p.wait()))
            .await
            .map(drop)
    }

    /// Stops every pipeline cleanly and waits for them.
    ///
    /// # Errors
    /// The first pipeline error.
    pub async fn shutdown(&self) -> Result<()> {
        for p in &self.pipelines {
            p.stop();
        }
        let mut first = None;
        for p in &self.pipelines {
            if let Err(e) = p.wait().await {
                first.get_or_insert(e);
            }
        }
        if let Err(e) = self.save_views().await {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Saves the rows of every materialized view whose bounded input was fully consumed, so a
    /// restart brings them back without running the query again. Views still fed by a
    /// running input are recomputed after a restart (until checkpoints record input positions).
    async fn save_views(&self) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        for (name, view) in &self.views {
            let complete = self.finished_restored.contains(name)
                || self
                    .pipeline(name)
                    .is_some_and(|p| p.bounded && p.status() == PipelineStatus::Finished);
            if complete {
                store
                    .save_view(name, &view.schema(), &view.snapshot())
                    .await?;
            } else {
                store.delete_view(name).await?;
            }
        }
        Ok(())
    }

    /// Rows in the materialized view `name`, now.
    pub fn view_rows(&self, name: &str) -> Option<Vec<RecordBatch>> {
        self.views.get(name).map(|v| v.snapshot())
    }
}

/// Prepares pipeline `name` to start from its newest complete checkpoint, if
/// checkpoints are on: loads it, commits the sink output it staged (its commit may not
/// have happened before a crash), and removes sink output no checkpoint covers.
async fn recover(
    checkpoints: Option<&CheckpointConfig>,
    name: &str,
    sink: Option<&Arc<dyn sluice_connectors::SinkConfig>>,
) -> Result<Option<Checkpointing>> {
    let Some(config) = checkpoints else {
        return Ok(None);
    };
    let store = config.store_for(name);
    let started = std::time::Instant::now();
    let mut restored = store.load_latest().await?;
    let next_id = store.ids().await?.last().copied().unwrap_or(0) + 1;
    if let Some(sink) = sink {
        restored = commit_restored(&store, name, sink.as_ref(), restored).await?;
        sink.recover(name, restored.as_ref().map(|r| r.manifest.id))
            .await?;
    }
    let metrics = Arc::new(crate::checkpoint::CheckpointMetrics::default());
    if let Some(r) = &restored {
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        metrics
            .restore_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        metrics
            .restored_id
            .store(r.manifest.id, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            pipeline = name,
            checkpoint = r.manifest.id,
            restore_ms = ms,
            "resuming from a checkpoint"
        );
    }
    Ok(Some(Checkpointing {
        store,
        interval: config.interval,
        retention: config.retention,
        sink: sink.cloned(),
        restored,
        next_id,
        metrics,
    }))
}

/// `rows` of `schema` with every timestamp column cast to microseconds.
fn timestamps_as_micros(
    schema: &SchemaRef,
    rows: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(_, tz) => f
                .as_ref()
                .clone()
                .with_data_type(DataType::Timestamp(TimeUnit::Microsecond, tz.clone())),
            _ => f.as_ref().clone(),
        })
        .collect();
    let micros: SchemaRef = Arc::new(Schema::new(fields));
    let rows = rows
        .iter()
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(micros.fields())
                .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(Arc::clone(&micros), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((micros, rows))
}

fn stmt_options(s: &Statement) -> Vec<(String, String)> {
    match s {
        Statement::CreateSource { options, .. } | Statement::CreateSink { options, .. } => {
            options.clone()
        }
        _ => vec![],
    }
}

fn select_all(relation: &str) -> Result<Box<Query>> {
    match sluice_planner::parse_one(&format!("SELECT * FROM {relation}"))?.statement {
        Statement::Query(q) => Ok(q),
        _ => Err(Error::Internal("SELECT did not parse as a query".into())),
    }
}

/// DataFusion spells the format `STORED AS PARQUET`; the dialect also takes Postgres'
/// trailing `(FORMAT parquet)`.
fn copy_format_to_stored_as(sql: &str) -> String {
    let trimmed = sql.trim().trim_end_matches(';').trim_end();
    let Some(open) = trimmed.rfind('(') else {
        return trimmed.to_string();
    };
    let tail = &trimmed[open + 1..];
    let Some(inner) = tail.strip_suffix(')') else {
        return trimmed.to_string();
    };
    let mut words = inner.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(k), Some(format), None) if k.eq_ignore_ascii_case("format") => {
            format!(
                "{} STORED AS {}",
                trimmed[..open].trim_end(),
                format.trim_matches('\'').to_ascii_uppercase()
            )
        }
        _ => trimmed.to_string(),
    }
}

/// The quoted target of `COPY ... TO 'target'`.
fn copy_target(sql: &str) -> Option<String> {
    let upper = sql.to_ascii_uppercase();
    let to = upper.rfind(" TO ")?;
    let rest = &sql[to + 4..];
    let start = rest.find('\'')? + 1;
    let end = rest[start..].find('\'')? + start;
    Some(rest[start..end].to_string())
}
