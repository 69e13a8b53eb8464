//! The `sluice` binary: runs streaming SQL from a file (`sluice run`).

mod progress;
mod run;
mod serve;
mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Sluice: a streaming SQL engine in one binary.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the statements of a SQL file in a local engine.
    ///
    /// Sources, views and sinks are created in order; every sink, materialized view and
    /// top-level SELECT starts a continuous pipeline. A top-level SELECT prints its rows as
    /// they come. With bounded sources (files, generators with `rows`) the command exits 0
    /// once every pipeline has finished and every sink has committed; unbounded pipelines
    /// run until Ctrl-C, which stops them cleanly.
    Run {
        /// The SQL file to run.
        file: PathBuf,
        /// Storage root (local folder or object_store URL), where checkpoints go.
        #[arg(long, default_value = "./sluice-data")]
        data_dir: String,
        /// Checkpoint every this long (`500ms`, `1s`, `1m`) and resume from the newest
        /// checkpoint when run again with the same data dir. Off when not given or `0s`.
        #[arg(long, value_parser = parse_duration)]
        checkpoint_interval: Option<std::time::Duration>,
        /// Complete checkpoints kept per pipeline.
        #[arg(long, default_value_t = sluice_engine::checkpoint::DEFAULT_RETENTION)]
        checkpoint_retention: usize,
        /// Never show the live progress line, even on a terminal.
        #[arg(long, short)]
        quiet: bool,
        /// Memory each pipeline's operator state may hold, in MiB; past it the pipeline
        /// fails with an error that says so. No limit when not given.
        #[arg(long)]
        max_state_mib: Option<u64>,
    },
    /// Run the long-lived server: gRPC (sluice.v1, health, reflection) and HTTP health.
    ///
    /// The catalog of sources, views, materialized views and sinks is kept under the data
    /// dir; a restarted server restores it and restarts the pipelines. Ctrl-C or SIGTERM
    /// stops the pipelines cleanly (sinks commit) and exits.
    Serve {
        /// gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
        /// HTTP address (health now; metrics and the dashboard later).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: std::net::SocketAddr,
        /// Storage root: a local folder or an object_store URL (s3://bucket/prefix, file:///...).
        #[arg(long, default_value = "./sluice-data")]
        data_dir: String,
        /// Checkpoint every pipeline every this long; `0s` turns checkpoints off.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        checkpoint_interval: std::time::Duration,
        /// Complete checkpoints kept per pipeline.
        #[arg(long, default_value_t = sluice_engine::checkpoint::DEFAULT_RETENTION)]
        checkpoint_retention: usize,
        /// Memory an ad-hoc query (over materialized views) may use, in MiB: its operators'
        /// memory pool and its result. Past it the query fails with RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = sluice_engine::session::query::DEFAULT_QUERY_MEMORY >> 20)]
        query_memory_mib: usize,
        /// Memory each pipeline's operator state may hold, in MiB; past it the pipeline
        /// fails with an error that says so (a statement's `max_state_mib` overrides it).
        /// No limit when not given.
        #[arg(long)]
        max_state_mib: Option<u64>,
    },
    /// An interactive SQL shell on a running `sluice serve`, like psql.
    ///
    /// Statements end with ';'. Result tables are printed; a continuous query over unbounded
    /// sources is followed live until Ctrl-C. `\d` lists sources, views, materialized views
    /// and sinks, `\d NAME` describes one, `\q` quits. History is kept in ~/.sluice_history.
    Sql {
        /// The server's gRPC address.
        #[arg(long, default_value = "127.0.0.1:50051")]
        server: String,
        /// Run these statements and exit.
        #[arg(short = 'c', long = "command", conflicts_with = "file")]
        command: Option<String>,
        /// Run the statements of this file and exit.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
}

/// The stack of each runtime thread: 16 MiB (address space; only what is used is memory).
const WORKER_STACK_BYTES: usize = 16 << 20;

/// Parses `500ms`, `1s`, `2m` and the like.
fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    sluice_connectors::options::parse_duration(v)
        .ok_or_else(|| format!("'{v}' is not a duration such as 500ms, 1s or 1m"))
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Planning and expression evaluation recurse over the statement's tree; the depth limits
    // of the planner keep that within what this stack holds with room to spare.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(WORKER_STACK_BYTES)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run {
                file,
                data_dir,
                checkpoint_interval,
                checkpoint_retention,
                quiet,
                max_state_mib,
            } => {
                let checkpoints = checkpoint_interval
                    .filter(|i| !i.is_zero())
                    .map(|i| (i, checkpoint_retention));
                let max_state = max_state_mib.map(|m| m.saturating_mul(1 << 20));
                run::run(&file, &data_dir, checkpoints, quiet, max_state).await
            }
            Command::Serve {
                listen,
                http,
                data_dir,
                checkpoint_interval,
                checkpoint_retention,
                query_memory_mib,
                max_state_mib,
            } => {
                let checkpoints = (!checkpoint_interval.is_zero())
                    .then_some((checkpoint_interval, checkpoint_retention));
                let limits = serve::Limits {
                    query_memory: query_memory_mib.saturating_mul(1 << 20),
                    max_state: max_state_mib.map(|m| m.saturating_mul(1 << 20)),
                };
                serve::serve(listen, http, &data_dir, checkpoints, limits).await
            }
            Command::Sql {
                server,
                command,
                file,
            } => {
                shell::shell(shell::ShellArgs {
                    server,
                    command,
                    file,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
