//! Arrow Flight SQL on the gRPC port: queries over materialized views (and bounded sources)
//! answered from current state, DDL through statement updates, and the metadata (SQL info,
//! catalogs, schemas, tables, table types) that ADBC, JDBC and pyarrow clients ask for.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes,
    CommandGetTables, CommandStatementQuery, CommandStatementUpdate, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, Ticket};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use futures::{Stream, TryStreamExt};
use prost::Message;
use sluice_engine::Session;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use super::exec::{Collected, collect};

/// The catalog and schema every Sluice relation is listed under.
const CATALOG: &str = "sluice";
const SCHEMA: &str = "public";

/// How long a result computed for `GetFlightInfo` waits for its `DoGet`.
const RESULT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

/// The most bytes the results waiting to be fetched hold together; past it the oldest go.
const MAX_HELD_BYTES: usize = 1 << 30;

/// A result waiting to be fetched.
struct Pending {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
    at: std::time::Instant,
}

/// Query results waiting to be fetched, by ticket. Results never fetched expire after
/// [`RESULT_TTL`], and the oldest go first when they hold more than [`MAX_HELD_BYTES`].
#[derive(Default)]
struct Results(HashMap<u64, Pending>);

impl Results {
    fn insert(&mut self, handle: u64, schema: SchemaRef, batches: Vec<RecordBatch>) {
        self.0.retain(|_, p| p.at.elapsed() < RESULT_TTL);
        let bytes = batches.iter().map(|b| b.get_array_memory_size()).sum();
        let mut held: usize = self.0.values().map(|p| p.bytes).sum();
        while held.saturating_add(bytes) > MAX_HELD_BYTES {
            let Some(oldest) = self.0.iter().min_by_key(|(_, p)| p.at).map(|(h, _)| *h) else {
                break;
            };
            if let Some(p) = self.0.remove(&oldest) {
                held -= p.bytes;
            }
        }
        self.0.insert(
            handle,
            Pending {
                schema,
                batches,
                bytes,
                at: std::time::Instant::now(),
            },
        );
    }

    fn take(&mut self, handle: u64) -> Option<(SchemaRef, Vec<RecordBatch>)> {
        let p = self.0.remove(&handle)?;
        (p.at.elapsed() < RESULT_TTL).then_some((p.schema, p.batches))
    }
}

/// Flight SQL over the server's session.
pub struct FlightSql {
    session: Arc<Mutex<Session>>,
    /// Results computed for `GetFlightInfo`, fetched once by `DoGet`.
    results: std::sync::Mutex<Results>,
    next: AtomicU64,
    sql_info: SqlInfoData,
}

impl FlightSql {
    pub fn try_new(session: Arc<Mutex<Session>>) -> anyhow::Result<Self> {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Sluice");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        Ok(Self {
            session,
            results: std::sync::Mutex::new(Results::default()),
            next: AtomicU64::new(1),
            sql_info: info.build()?,
        })
    }

    fn lock_results(&self) -> Result<std::sync::MutexGuard<'_, Results>, Status> {
        self.results
            .lock()
            .map_err(|_| Status::internal("result table lock poisoned"))
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send>>;

fn stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> Response<DoGetStream> {
    let s = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Response::new(Box::pin(s))
}

fn info_for(
    command: &impl ProstMessageExt,
    schema: &datafusion::arrow::datatypes::Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket {
        ticket: command.as_any().encode_to_vec().into(),
    };
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let stmt = super::parse::one(query.query).await?;
        let (schema, batches) = match collect(&self.session, &stmt).await? {
            Collected::Rows(schema, batches) => (schema, batches),
            // DDL sent as a query (as ADBC's DB-API cursors do) answers with what it did.
            Collected::Message(m) => {
                let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
                    datafusion::arrow::datatypes::Field::new(
                        "message",
                        datafusion::arrow::datatypes::DataType::Utf8,
                        false,
                    ),
                ]));
                let batch = RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(datafusion::arrow::array::StringArray::from(vec![
                        m,
                    ]))],
                )
                .map_err(|e| Status::internal(e.to_string()))?;
                (schema, vec![batch])
            }
        };
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let handle = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock_results()?
            .insert(handle, Arc::clone(&schema), batches);
        let ticket = TicketStatementQuery {
            statement_handle: handle.to_be_bytes().to_vec().into(),
        };
        let ticket = Ticket {
            ticket: ticket.as_any().encode_to_vec().into(),
        };
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(request.into_inner())
            .with_total_records(rows as i64);
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let handle: [u8; 8] = ticket
            .statement_handle
            .as_ref()
            .try_into()
            .map_err(|_| Status::invalid_argument("malformed statement handle"))?;
        let (schema, batches) = self
            .lock_results()?
            .take(u64::from_be_bytes(handle))
            .ok_or_else(|| {
                Status::not_found(
                    "no such result: each result can be fetched once, within 60 s of GetFlightInfo",
                )
            })?;
        Ok(stream(schema, batches))
    }

    async fn do_put_statement_update(
        &self,
        ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let statements = super::parse::script(ticket.query).await?;
        let mut rows = 0i64;
        for stmt in &statements {
            if let Collected::Rows(_, batches) = collect(&self.session, stmt).await? {
                rows += batches.iter().map(|b| b.num_rows() as i64).sum::<i64>();
            }
        }
        Ok(rows)
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info_for(&query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let builder = query.into_builder(&self.sql_info);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(stream(schema, vec![batch]))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(&query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(stream(schema, vec![batch]))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(&query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG, SCHEMA);
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(stream(schema, vec![batch]))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(&query, &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let session = self.session.lock().await;
        let catalog = session.catalog();
        let mut builder = query.into_builder();
        let mut add = |name: &str, kind: &str, schema: &datafusion::arrow::datatypes::Schema| {
            builder.append(CATALOG, SCHEMA, name, kind, schema)
        };
        for s in catalog.sources.values() {
            add(&s.name, "SOURCE", &s.schema).map_err(|e| Status::internal(e.to_string()))?;
        }
        for v in &catalog.views {
            add(&v.name, "VIEW", &v.schema).map_err(|e| Status::internal(e.to_string()))?;
        }
        for m in catalog.materialized_views.values() {
            add(&m.name, "MATERIALIZED VIEW", &m.schema)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let schema = builder.schema();
        let batch = builder
            .build()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(stream(schema, vec![batch]))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        info_for(&query, &table_types_schema(), request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        _query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let schema = Arc::new(table_types_schema());
        let types = datafusion::arrow::array::StringArray::from(vec![
            "MATERIALIZED VIEW",
            "SOURCE",
            "VIEW",
        ]);
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(types)])
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(stream(schema, vec![batch]))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn table_types_schema() -> datafusion::arrow::datatypes::Schema {
    datafusion::arrow::datatypes::Schema::new(vec![datafusion::arrow::datatypes::Field::new(
        "table_type",
        datafusion::arrow::datatypes::DataType::Utf8,
        false,
    )])
}
