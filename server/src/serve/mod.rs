//! `sluice serve`: the long-running server. gRPC (`sluice.v1`, Arrow Flight SQL, health,
//! reflection) on one port; HTTP on another (`/health`, Prometheus `/metrics`, and the
//! webhook sources' `/ingest/<source>`); the catalog kept under the data dir and restored
//! at start.
//! Ctrl-C or SIGTERM stops the pipelines cleanly and exits.

mod exec;
mod flight_sql;
mod ipc;
mod parse;
mod prometheus;
mod service;
mod status;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arrow_flight::flight_service_server::FlightServiceServer;
use sluice_engine::{CatalogStore, Session};
use sluice_proto::v1::sluice_service_server::SluiceServiceServer;
use tokio::sync::Mutex;

/// How long any RPC may run before the server ends it with DEADLINE_EXCEEDED (a client's
/// own `grpc-timeout` may be shorter). A Subscribe stream runs on once it has answered.
const RPC_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// What the server lets one request use.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes an ad-hoc query may use.
    pub query_memory: usize,
    /// Bytes each pipeline's state may hold.
    pub max_state: Option<u64>,
}

/// `checkpoints`: the interval and retention, when pipelines checkpoint into `data_dir`.
pub async fn serve(
    listen: SocketAddr,
    http: SocketAddr,
    data_dir: &str,
    checkpoints: Option<(std::time::Duration, usize)>,
    limits: Limits,
) -> anyhow::Result<()> {
    let mut session = Session::new();
    session.set_query_memory_limit(limits.query_memory);
    session.set_max_state_bytes(limits.max_state);
    if let Some((interval, retention)) = checkpoints {
        let config =
            sluice_engine::checkpoint::CheckpointConfig::for_root(data_dir, interval, retention)
                .with_context(|| format!("data dir '{data_dir}'"))?;
        session.enable_checkpoints(config);
    }
    let store = CatalogStore::open(data_dir).with_context(|| format!("data dir '{data_dir}'"))?;
    let restored = session
        .restore_from(store)
        .await
        .with_context(|| format!("restoring the catalog from '{data_dir}'"))?;
    tracing::info!(restored, data_dir, "catalog restored");
    let session = Arc::new(Mutex::new(session));

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<SluiceServiceServer<service::Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grpc_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let http_listener = tokio::net::TcpListener::bind(http)
        .await
        .with_context(|| format!("cannot listen on {http}"))?;
    eprintln!("sluice serving gRPC on {listen}, HTTP on {http}, data in {data_dir}");

    let grpc = tonic::transport::Server::builder()
        .timeout(RPC_DEADLINE)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(SluiceServiceServer::new(service::Service::new(Arc::clone(
            &session,
        ))))
        .add_service(FlightServiceServer::new(flight_sql::FlightSql::try_new(
            Arc::clone(&session),
        )?))
        .serve_with_incoming_shutdown(tokio_stream_of(grpc_listener), wait_for(stop_rx.clone()));
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/metrics",
            axum::routing::get({
                let session = Arc::clone(&session);
                move || prometheus::handler(Arc::clone(&session))
            }),
        )
        .route("/ingest/{source}", axum::routing::post(ingest));
    let http = axum::serve(http_listener, app).with_graceful_shutdown(wait_for(stop_rx));

    let servers = async {
        tokio::try_join!(async { grpc.await.context("gRPC server") }, async {
            http.await.context("HTTP server")
        })
    };
    tokio::select! {
        r = servers => { r?; }
        _ = shutdown_signal() => {
            tracing::info!("stopping");
        }
    }
    let _ = stop_tx.send(true);
    let session = session.lock().await;
    session.shutdown().await?;
    Ok(())
}

async fn wait_for(mut stop: tokio::sync::watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Accepted connections of `listener`, as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let conn = listener.accept().await.map(|(s, _)| s);
        Some((conn, listener))
    })
}

/// `POST /ingest/<source>`: hands the body (JSON lines, or the source's format) to the
/// pipelines reading that webhook source; 200 once they accepted it.
async fn ingest(
    axum::extract::Path(source): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, String) {
    use axum::http::StatusCode;
    use sluice_connectors::webhook::{IngestError, hub};
    match hub().ingest(&source, body).await {
        Ok(n) => (StatusCode::OK, format!("accepted by {n} pipeline(s)\n")),
        Err(IngestError::NoSuchSource) => (
            StatusCode::NOT_FOUND,
            format!("no running pipeline reads a webhook source named '{source}'\n"),
        ),
        Err(IngestError::Stopped) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the pipeline reading '{source}' stopped; send again\n"),
        ),
    }
}
