//! The `barge` command: parses arguments, sets up logging, makes one library call per command, and
//! turns the outcome into an exit code. All behaviour lives in the library.

mod args;
mod config;
mod discover_cmd;
mod echo_cmd;
mod exit;
mod identity;
mod lesson_cmd;
mod progress;
mod serve_cmd;
mod udp_cmd;
mod v1_cmd;

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use barge::server::ServerConfig;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use args::{Command, EchoCommand, FrameworkArgs, Opts, UdpCommand};
use config::seconds;
use v1_cmd::Manage;

/// The writer threads of every store this process opens (a server's folder, a download's output
/// folder): the process waits for them before it exits, so an interrupted transfer's resume point
/// reaches the disk. The binary owns the process, so this one is the binary's, not the library's.
fn writers() -> &'static barge::store::Writers {
    static WRITERS: std::sync::OnceLock<barge::store::Writers> = std::sync::OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    // Documentation commands need no runtime, logging or crypto.
    match &opts.command {
        Command::Completions { shell } => {
            // Rendered into memory first: writing to a closed pipe is an error, not a panic.
            let mut text = Vec::new();
            let mut cmd = <Opts as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "barge", &mut text);
            return print_doc(&text);
        }
        Command::Man => {
            let mut text = Vec::new();
            let man = clap_mangen::Man::new(<Opts as clap::CommandFactory>::command());
            if let Err(e) = man.render(&mut text) {
                eprintln!("barge: cannot render the manual page: {e}");
                return ExitCode::from(exit::FAILURE);
            }
            return print_doc(&text);
        }
        _ => {}
    }
    barge::tls::install_crypto_provider();
    init_logging(&opts);
    let runtime = match runtime_for(&opts.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("barge: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let verbosity = match (opts.quiet, opts.verbose) {
        (true, _) => v1_cmd::Verbosity::Quiet,
        (false, 0) => v1_cmd::Verbosity::Normal,
        (false, _) => v1_cmd::Verbosity::Verbose,
    };
    let outcome = runtime.block_on(async {
        match opts.command {
            Command::Serve(a) => serve_cmd::serve(*a).await,
            Command::Send(a) if a.legacy => interruptible(lesson_cmd::send(a)).await,
            Command::Send(a) => interruptible(v1_cmd::send(a, verbosity)).await,
            Command::Pick(a) => interruptible(lesson_cmd::pick(a, verbosity)).await,
            Command::Get(a) => interruptible(v1_cmd::get(a, verbosity)).await,
            Command::Rm(a) => interruptible(v1_cmd::manage(Manage::Rm(a), verbosity)).await,
            Command::Mv(a) => interruptible(v1_cmd::manage(Manage::Mv(a), verbosity)).await,
            Command::Mkdir(a) => interruptible(v1_cmd::manage(Manage::Mkdir(a), verbosity)).await,
            Command::Ls(a) => interruptible(v1_cmd::ls(a)).await,
            Command::Bench(a) => interruptible(v1_cmd::bench(a)).await,
            Command::Discover(a) => interruptible(discover_cmd::run(a)).await,
            Command::Udp(UdpCommand::Serve(a)) => udp_cmd::serve(a).await,
            Command::Udp(UdpCommand::Send(a)) => interruptible(udp_cmd::send(a)).await,
            Command::Echo(EchoCommand::Serve(a)) => echo_cmd::serve(a).await,
            Command::Echo(EchoCommand::Send(a)) => interruptible(echo_cmd::send(a)).await,
            Command::Completions { .. } | Command::Man => Ok(exit::SUCCESS), // handled above
        }
    });
    // Blocking file readers may still be parked on a full channel after an error.
    runtime.shutdown_timeout(Duration::from_millis(100));
    // An interrupted download's writer saves its resume point on its way out: let it finish.
    if !writers().wait(Duration::from_secs(10)) {
        eprintln!("barge: warning: a transfer did not save its resume point in time");
    }
    match outcome {
        Ok(code) => {
            if code == exit::INTERRUPTED {
                eprintln!(
                    "barge: interrupted — run the same command again to resume (verified data is kept)"
                );
            }
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!(
                "barge: error: {}",
                barge_proto::name::printable(&describe(&e))
            );
            ExitCode::from(exit::code_for(&e))
        }
    }
}

/// Servers and uploads get a worker per core (uploads overlap disk and network). The request/reply
/// clients do one small thing at a time; on one thread they avoid a cross-thread wake-up per round
/// trip (measured: 20,000 UDP round trips in 1.17 s instead of 1.6 s).
/// Writes generated documentation to stdout; a closed pipe (`| head`) is not an error.
fn print_doc(text: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("barge: cannot write to stdout: {e}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn runtime_for(command: &Command) -> std::io::Result<tokio::runtime::Runtime> {
    if is_server(command)
        || matches!(
            command,
            Command::Send(_) | Command::Pick(_) | Command::Get(_)
        )
    {
        tokio::runtime::Runtime::new()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
}

fn is_server(command: &Command) -> bool {
    matches!(
        command,
        Command::Serve(_)
            | Command::Udp(UdpCommand::Serve(_))
            | Command::Echo(EchoCommand::Serve(_))
    )
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
    let serving = is_server(&opts.command);
    let level = match (opts.quiet, opts.verbose) {
        (true, _) => "warn",
        (false, 0) if serving => "info",
        (false, 0) => "warn",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs a client command; Ctrl-C ends it with [`exit::INTERRUPTED`].
async fn interruptible(work: impl Future<Output = Result<u8>>) -> Result<u8> {
    tokio::select! {
        r = work => r,
        r = tokio::signal::ctrl_c() => r.map(|()| exit::INTERRUPTED).context("cannot listen for Ctrl-C"),
    }
}

/// Raises the open-file limit for a server and warns if it is still too low for `config`.
fn check_open_files(config: &ServerConfig) {
    // Each connection needs a socket and, while it transfers, a file or two; keep some spare.
    const FILES_PER_CONNECTION: u64 = 3;
    const SPARE: u64 = 64;
    if let Some(limit) = barge::net::raise_open_file_limit() {
        let needed = config.max_connections as u64 * FILES_PER_CONNECTION + SPARE;
        if needed > limit {
            tracing::warn!(
                max_connections = config.max_connections,
                open_file_limit = limit,
                "the open-file limit allows about {} busy connections; raise it (ulimit -n {needed}) \
                 or lower --max-connections; beyond it, accepting pauses and retries",
                limit.saturating_sub(SPARE) / FILES_PER_CONNECTION
            );
        }
    }
}

/// The framework's policy from its flags, with the open-file limit raised to fit it.
fn server_config(f: &FrameworkArgs) -> Result<ServerConfig> {
    let config = config::server_config(f)?;
    check_open_files(&config);
    Ok(config)
}

/// Binds a TCP listener and prints the one stdout line that says where a server listens (tests
/// and scripts read it; logs go to stderr).
fn listen(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    let listener = bind(addr)?;
    announce(&format!("listening on {}{what}", listener.local_addr()?))?;
    Ok(listener)
}

/// Binds `addr`, with a hint when the port is taken.
fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    barge::net::bind_tcp(addr).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            format!(
                " (another program already listens there: stop it, or pick another port with \
                 --addr {}:PORT; port 0 picks a free one)",
                addr.ip()
            )
        } else {
            String::new()
        };
        anyhow::Error::new(e).context(format!("cannot listen on {addr}{hint}"))
    })
}

fn announce(line: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout();
    writeln!(out, "barge: {line}")?;
    out.flush()?;
    Ok(())
}
