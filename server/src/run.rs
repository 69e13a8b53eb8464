//! `sluice run FILE.sql`: executes a script in a local engine and prints what it produces.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use sluice_engine::{Session, StatementOutput};

use crate::progress::Progress;

/// `checkpoints`: the interval and retention, when checkpointing into `data_dir`;
/// `max_state`: the bytes each pipeline's state may hold.
pub async fn run(
    file: &Path,
    data_dir: &str,
    checkpoints: Option<(std::time::Duration, usize)>,
    quiet: bool,
    max_state: Option<u64>,
) -> anyhow::Result<()> {
    let sql = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read SQL file '{}'", file.display()))?;
    let statements = sluice_planner::parse_script(&sql)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut session = Session::new();
    session.settle_before_queries(true);
    session.set_max_state_bytes(max_state);
    if let Some((interval, retention)) = checkpoints {
        let config =
            sluice_engine::checkpoint::CheckpointConfig::for_root(data_dir, interval, retention)
                .with_context(|| format!("data dir '{data_dir}'"))?;
        session.enable_checkpoints(config);
    }
    let chatty = std::io::stderr().is_terminal() && !quiet;
    let mut printers = Vec::new();
    let output_closed = Arc::new(tokio::sync::Notify::new());
    for stmt in &statements {
        let output = session
            .execute(stmt)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        match output {
            StatementOutput::Done(message) => {
                if chatty {
                    eprintln!("{message}");
                }
            }
            StatementOutput::Rows { batches, .. } => print_batches(&batches)?,
            StatementOutput::Query { stream, .. } => {
                let batches = sluice_engine::session::query::collect(stream)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}: {}: {e}", file.display(), stmt.locator()))?;
                print_batches(&batches)?
            }
            StatementOutput::Stream { mut rows, .. } => {
                let closed = Arc::clone(&output_closed);
                printers.push(tokio::spawn(async move {
                    while let Some(batch) = rows.recv().await {
                        if print_batches(&[batch]).is_err() {
                            // The reader of our output went away (`| head`): stop quietly.
                            closed.notify_one();
                            break;
                        }
                    }
                }));
            }
        }
    }
    let progress = chatty.then(|| {
        Progress::start(
            session
                .pipelines()
                .iter()
                .map(|p| p.metrics.clone())
                .collect(),
        )
    });
    let bounded = session.pipelines().iter().all(|p| p.bounded);
    let outcome = if bounded {
        tokio::select! {
            r = session.wait_bounded() => r,
            _ = output_closed.notified() => Ok(()),
        }
    } else {
        tokio::select! {
            r = session.wait_all() => r,
            _ = output_closed.notified() => Ok(()),
            _ = tokio::signal::ctrl_c() => {
                if chatty {
                    eprintln!("\nstopping...");
                }
                Ok(())
            }
            _ = terminated() => Ok(()),
        }
    };
    let stopped = session.shutdown().await;
    for p in printers {
        let _ = p.await;
    }
    if let Some(p) = progress {
        p.finish();
    }
    outcome?;
    stopped?;
    Ok(())
}

/// Resolves on SIGTERM (never elsewhere than on Unix).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

fn print_batches(batches: &[RecordBatch]) -> anyhow::Result<()> {
    if batches.iter().all(|b| b.num_rows() == 0) && !batches.is_empty() {
        return Ok(());
    }
    let text = pretty_format_batches(batches)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()?;
    Ok(())
}
