//! `sluice sql`: an interactive SQL shell (and `-c` / `-f`) that talks to `sluice serve` over
//! gRPC. Results print as tables; a continuous query over unbounded sources is tailed live
//! until Ctrl-C; `\d` lists sources, views, materialized views and sinks.

use std::path::PathBuf;

use anyhow::Context;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use sluice_proto::v1 as pb;
use sluice_proto::v1::sluice_service_client::SluiceServiceClient;
use tonic::transport::Channel;

pub struct ShellArgs {
    pub server: String,
    pub command: Option<String>,
    pub file: Option<PathBuf>,
}

pub async fn shell(args: ShellArgs) -> anyhow::Result<()> {
    let url = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut client = SluiceServiceClient::connect(url.clone())
        .await
        .with_context(|| format!("cannot connect to a sluice server at {url}"))?;
    if let Some(sql) = args.command {
        return run(&mut client, &sql).await;
    }
    if let Some(file) = args.file {
        let sql = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read '{}'", file.display()))?;
        return run(&mut client, &sql).await;
    }
    interactive(&mut client, &url).await
}

async fn interactive(client: &mut SluiceServiceClient<Channel>, url: &str) -> anyhow::Result<()> {
    let mut editor = DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".sluice_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    println!(
        "sluice sql, connected to {url}. End statements with ';'. \\d lists objects, \\q quits."
    );
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() {
            "sluice> "
        } else {
            "   ...> "
        };
        match editor.readline(prompt) {
            Ok(line) => {
                let trimmed = line.trim();
                if buffer.is_empty() && trimmed.starts_with('\\') {
                    let _ = editor.add_history_entry(trimmed);
                    match trimmed {
                        "\\q" => break,
                        "\\d" => report(
                            run(
                                client,
                                "SHOW SOURCES; SHOW VIEWS; SHOW MATERIALIZED VIEWS; SHOW SINKS",
                            )
                            .await,
                        ),
                        other => match other.strip_prefix("\\d ") {
                            Some(name) => {
                                report(run(client, &format!("DESCRIBE {}", name.trim())).await)
                            }
                            None => eprintln!("unknown command {other}: \\d, \\d NAME, \\q"),
                        },
                    }
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if trimmed.ends_with(';') {
                    let sql = std::mem::take(&mut buffer);
                    let _ = editor.add_history_entry(sql.trim());
                    report(run(client, &sql).await);
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

fn report(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
    }
}

/// Runs a script; a lone continuous query over unbounded sources is tailed instead.
async fn run(client: &mut SluiceServiceClient<Channel>, sql: &str) -> anyhow::Result<()> {
    match client
        .execute(pb::ExecuteRequest {
            sql: sql.to_string(),
        })
        .await
    {
        Ok(response) => {
            for result in response.into_inner().results {
                if result.arrow_ipc.is_empty() {
                    println!("{}", result.message);
                } else {
                    print_ipc(&result.arrow_ipc)?;
                }
            }
            Ok(())
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition && is_single_query(sql) => {
            tail(client, sql).await
        }
        Err(status) => anyhow::bail!("{}", status.message()),
    }
}

fn is_single_query(sql: &str) -> bool {
    matches!(
        sluice_planner::parse_one(sql).map(|s| s.statement),
        Ok(sluice_planner::Statement::Query(_))
    )
}

/// Prints a continuous query's results as they arrive, until it ends or Ctrl-C.
async fn tail(client: &mut SluiceServiceClient<Channel>, sql: &str) -> anyhow::Result<()> {
    let request = pb::SubscribeRequest {
        target: Some(pb::subscribe_request::Target::Query(sql.to_string())),
    };
    let mut stream = client
        .subscribe(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    eprintln!("(following the query; Ctrl-C stops)");
    loop {
        tokio::select! {
            msg = stream.message() => match msg.map_err(|s| anyhow::anyhow!("{}", s.message()))? {
                Some(msg) => print_ipc(&msg.arrow_ipc)?,
                None => return Ok(()),
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

fn print_ipc(bytes: &[u8]) -> anyhow::Result<()> {
    let batches: Vec<RecordBatch> =
        StreamReader::try_new(bytes, None)?.collect::<Result<_, _>>()?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    println!("{}", pretty_format_batches(&batches)?);
    println!("({rows} row{})", if rows == 1 { "" } else { "s" });
    Ok(())
}
