//! The `barge` command: parses arguments, sets up logging, makes one library call per command, and
//! turns the outcome into an exit code. All behaviour lives in the library.

mod args;
mod progress;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use barge::client::{self, ClientError, LegacySender, Outgoing};
use barge::pick::{self, Choice};
use barge::server::{self, ServerConfig};
use barge::service::upload::UploadService;
use barge::storage::{OnConflict, Storage, StorageConfig};
use clap::Parser;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tracing_subscriber::EnvFilter;

use args::{ClientArgs, Command, Conflict, Opts, PickArgs, SendArgs, ServeArgs};
use progress::Renderer;

/// Exit code after Ctrl-C, as shells report a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let opts = Opts::parse();
    init_logging(&opts);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barge: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match opts.command {
            Command::Serve(a) => serve(a).await.map(|()| true),
            Command::Send(a) => interruptible(send(a)).await,
            Command::Pick(a) => interruptible(pick(a)).await,
        }
    });
    // Blocking file readers may still be parked on a full channel after an error.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("barge: interrupted");
            ExitCode::from(EXIT_INTERRUPTED)
        }
        Err(e) => {
            eprintln!("barge: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, skipping a cause its parent's message already includes.
fn describe(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn init_logging(opts: &Opts) {
    let level = match (opts.quiet, opts.verbose, &opts.command) {
        (true, _, _) => "warn",
        (false, 0, Command::Serve(_)) => "info",
        (false, 0, _) => "warn",
        (false, 1, _) => "debug",
        (false, _, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs a client command; `Ok(false)` if Ctrl-C interrupted it.
async fn interruptible(work: impl Future<Output = Result<()>>) -> Result<bool> {
    tokio::select! {
        r = work => r.map(|()| true),
        r = tokio::signal::ctrl_c() => r.map(|()| false).context("cannot listen for Ctrl-C"),
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let storage = Storage::open(StorageConfig {
        on_conflict: match a.on_conflict {
            Conflict::Rename => OnConflict::Rename,
            Conflict::Overwrite => OnConflict::Overwrite,
            Conflict::Fail => OnConflict::Fail,
        },
        max_file_size: a.max_file_size,
        fsync: !a.no_fsync,
        ..StorageConfig::new(&a.dir)
    })
    .with_context(|| format!("cannot use {} for storage", a.dir.display()))?;
    let config = ServerConfig {
        max_connections: a.max_connections,
        idle_timeout: seconds(a.idle_timeout, "--idle-timeout")?,
        shutdown_grace: seconds(a.shutdown_grace, "--shutdown-grace")?,
    };
    let listener =
        barge::net::bind_tcp(a.addr).with_context(|| format!("cannot listen on {}", a.addr))?;
    let local = listener.local_addr()?;
    let dir = std::fs::canonicalize(storage.dir()).unwrap_or_else(|_| storage.dir().to_owned());
    // One plain line on stdout says where to connect (tests and scripts read it); logs go to stderr.
    println!(
        "barge: listening on {local}, storing files in {}",
        dir.display()
    );
    std::io::stdout().flush()?;
    server::serve(
        listener,
        Arc::new(UploadService::new(storage)),
        config,
        server::shutdown_signal(),
    )
    .await;
    Ok(())
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds"))
}

async fn connect(c: &ClientArgs) -> Result<barge::net::IdleTimeout<TcpStream>> {
    let stream = barge::net::connect(&c.to, seconds(c.connect_timeout, "--connect-timeout")?)
        .await
        .map_err(|source| ClientError::Connect {
            addr: c.to.clone(),
            source,
        })?;
    Ok(barge::net::IdleTimeout::new(
        stream,
        seconds(c.timeout, "--timeout")?,
    ))
}

async fn send(a: SendArgs) -> Result<()> {
    // Check every file before connecting, so a typo fails fast and sends nothing.
    let files = a
        .files
        .iter()
        .map(|p| Outgoing::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let stream = connect(&a.client).await?;
    let mut renderer = Renderer::new(a.client.progress);
    client::send_files(stream, files, |e| renderer.on_event(e)).await?;
    Ok(())
}

async fn pick(a: PickArgs) -> Result<()> {
    let entries =
        pick::list_files(&a.dir).with_context(|| format!("cannot list {}", a.dir.display()))?;
    if entries.is_empty() {
        bail!("{} has no files to upload", a.dir.display());
    }
    let mut renderer = Renderer::new(a.client.progress);
    // Connect first, as the lesson does, so an unreachable server is reported before any question.
    let mut sender = Some(LegacySender::new(connect(&a.client).await?));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = std::io::stdout();
    loop {
        for (i, e) in entries.iter().enumerate() {
            writeln!(
                out,
                "{} {} ({})",
                i + 1,
                progress::printable(&e.name),
                indicatif::HumanBytes(e.size)
            )?;
        }
        write!(out, "please choose a file to upload (q to quit)>>>: ")?;
        out.flush()?;
        let Some(line) = lines.next_line().await? else {
            writeln!(out)?;
            break;
        };
        let index = match pick::parse_choice(&line, entries.len()) {
            Ok(Choice::Quit) => break,
            Ok(Choice::Index(i)) => i,
            Err(e) => {
                writeln!(out, "{e}")?;
                continue;
            }
        };
        if let Err(e) =
            upload_one(&a.client, &mut sender, &entries[index].path, &mut renderer).await
        {
            // The connection is gone; the next choice opens a new one.
            sender = None;
            eprintln!("barge: error: {}", describe(&e));
        }
    }
    if let Some(sender) = sender {
        sender.finish().await?;
    }
    Ok(())
}

async fn upload_one(
    c: &ClientArgs,
    sender: &mut Option<LegacySender<barge::net::IdleTimeout<TcpStream>>>,
    path: &Path,
    renderer: &mut Renderer,
) -> Result<()> {
    let file = Outgoing::open(path)?;
    if sender.is_none() {
        *sender = Some(LegacySender::new(connect(c).await?));
    }
    if let Some(s) = sender.as_mut() {
        s.send(file, &mut |e| renderer.on_event(e)).await?;
    }
    Ok(())
}
