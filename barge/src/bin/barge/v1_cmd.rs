//! `barge send`, `get`, `ls`, `rm`, `mv`, `mkdir` and `bench` over barge's protocol (v1):
//! verified, resumable transfers and remote management, rendered for people (one overall
//! progress line, a bar per big file, a summary) or as JSON lines for scripts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use barge::client::v1::{self, Change, Event, Report};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::args::{
    BenchArgs, ConnArgs, GetArgs, LsArgs, ManageArgs, ProgressMode, RmArgs, SendArgs, TransferArgs,
    split_target,
};
use crate::config::{ClientConfig, UsageError};
use crate::exit;
use crate::progress::printable;

/// How much a person wants to read: `-q` errors only, `-v` a line per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

pub async fn send(a: SendArgs, verbosity: Verbosity) -> Result<u8> {
    let stdin = a.files.iter().any(|p| p.as_os_str() == "-");
    if !stdin {
        if a.name.is_some() {
            return Err(UsageError("--name names what `send -` reads from stdin".into()).into());
        }
        let how = Sending {
            follow_links: a.follow_links,
            dest: a.dest,
            streams: a.streams,
        };
        return send_paths(&a.to, &a.conn, &a.transfer, a.files, how, verbosity).await;
    }
    if a.files.len() != 1 {
        return Err(UsageError("`-` (stdin) is sent alone: name no other file".into()).into());
    }
    let Some(name) = a.name.clone() else {
        return Err(
            UsageError("`send -` needs --name NAME: what to call it on the server".into()).into(),
        );
    };
    barge_proto::name::validate_file_name(&name)
        .map_err(|e| UsageError(format!("--name {name:?}: {e}")))?;
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(UsageError(
            "`send -` reads stdin, which is a terminal: pipe something in".into(),
        )
        .into());
    }
    // Kept whole in a temporary file first: the protocol declares a file's size up front, and
    // a lost connection resumes from it (a pipe cannot be read twice).
    let spool = tempfile::Builder::new()
        .prefix("barge-stdin-")
        .tempdir()
        .context("cannot make a temporary folder for stdin")?;
    let path = spool.path().join(&name);
    let target = path.clone();
    tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut file = std::fs::File::create(&target)
            .with_context(|| format!("cannot create {}", target.display()))?;
        std::io::copy(&mut std::io::stdin().lock(), &mut file)
            .with_context(|| format!("cannot keep stdin in {}", target.display()))
    })
    .await??;
    let how = Sending {
        follow_links: false,
        dest: a.dest,
        streams: a.streams,
    };
    send_paths(&a.to, &a.conn, &a.transfer, vec![path], how, verbosity).await
}

/// How `send` walks and uploads, beside the connection and transfer options.
#[derive(Debug, Default)]
pub struct Sending {
    /// `--follow-links`.
    pub follow_links: bool,
    /// `--dest`.
    pub dest: Option<String>,
    /// `--streams` (1 when not given).
    pub streams: u32,
}

/// Uploads files and folders with barge's protocol and renders the outcome.
pub async fn send_paths(
    to: &str,
    conn: &ConnArgs,
    t: &TransferArgs,
    paths: Vec<PathBuf>,
    how: Sending,
    verbosity: Verbosity,
) -> Result<u8> {
    let (addr, _) = split_target(&[], to)?;
    let c = ClientConfig::new(conn, t.bwlimit)?;
    let opts = v1::Options {
        follow_links: how.follow_links,
        dest: how.dest,
        streams: how.streams.max(1),
        ..c.options(Some(t))?
    };
    let mut view = View::new(t.progress, t.json, verbosity, "sent");
    let started = Instant::now();
    let dial = c.dial(&addr).await?;
    let result = v1::send(&dial, &paths, &opts, &mut |e| view.event(e)).await;
    view.finish(result, started)
}

pub async fn get(a: GetArgs, verbosity: Verbosity) -> Result<u8> {
    let (addr, names) = split_target(&a.args, &a.from.from)?;
    if names.is_empty() {
        return Err(UsageError(format!(
            "name at least one file or folder to get from {addr} (barge get {addr} NAME...)"
        ))
        .into());
    }
    let c = ClientConfig::new(&a.conn, a.transfer.bwlimit)?;
    let mut opts = c.options(Some(&a.transfer))?;
    if a.overwrite {
        opts.on_existing = v1::OnExisting::Overwrite;
    }
    opts.delete = a.delete;
    opts.fsync = !a.no_fsync;
    let dial = c.dial(&addr).await?;
    if a.out.as_os_str() == "-" {
        return get_to_stdout(&dial, &names, &opts, &a.transfer, verbosity).await;
    }
    let mut view = View::new(a.transfer.progress, a.transfer.json, verbosity, "fetched");
    let started = Instant::now();
    let result = v1::get(&dial, &names, &a.out, &opts, &mut |e| view.event(e)).await;
    view.finish(result, started)
}

/// `get NAME -o -`: the file is fetched and verified whole into a temporary folder, then copied
/// to stdout, so a reader never gets bytes that later fail verification.
async fn get_to_stdout(
    dial: &v1::Tcp,
    names: &[String],
    opts: &v1::Options,
    t: &TransferArgs,
    verbosity: Verbosity,
) -> Result<u8> {
    if names.len() != 1 || t.json || opts.delete || opts.dry_run {
        return Err(UsageError(
            "-o - writes one file to stdout: name one file, without --json, --delete or --dry-run"
                .into(),
        )
        .into());
    }
    let spool = tempfile::Builder::new()
        .prefix("barge-get-")
        .tempdir()
        .context("cannot make a temporary folder for the download")?;
    let quiet = if verbosity == Verbosity::Verbose {
        verbosity
    } else {
        Verbosity::Quiet
    };
    let mut view = View::new(t.progress, false, quiet, "fetched");
    let started = Instant::now();
    let result = v1::get(dial, names, spool.path(), opts, &mut |e| view.event(e)).await;
    let report = match &result {
        Ok(report) => report.clone(),
        Err(_) => return view.finish(result, started),
    };
    let code = view.finish(result, started)?;
    if code != exit::SUCCESS {
        return Ok(code);
    }
    let Some(file) = only_file(spool.path())? else {
        bail!("{} is a folder: -o - writes one file", names[0]);
    };
    if report.files + report.unchanged != 1 {
        bail!("{} is not one file: -o - writes one file", names[0]);
    }
    let mut src =
        std::fs::File::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut out = std::io::stdout().lock();
    match std::io::copy(&mut src, &mut out).and_then(|_| out.flush()) {
        Ok(()) => Ok(exit::SUCCESS),
        // `| head`: the reader had enough.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::SUCCESS),
        Err(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
    }
}

/// The one regular file in `dir` (barge's own state aside); `None` if there is a folder instead.
fn only_file(dir: &Path) -> Result<Option<PathBuf>> {
    let mut found = None;
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        if item.file_name() == barge::store::STATE_DIR {
            continue;
        }
        if !item.file_type()?.is_file() || found.is_some() {
            return Ok(None);
        }
        found = Some(item.path());
    }
    Ok(found)
}

pub async fn ls(a: LsArgs) -> Result<u8> {
    let json = a.json;
    let result = ls_entries(a).await;
    if json && let Err(e) = &result {
        json_error(e);
    }
    result
}

/// A failure as the last JSON line on stdout: scripts read stdout.
fn json_error(e: &anyhow::Error) {
    println!(
        "{}",
        json!({"event": "error", "code": exit::code_for(e), "message": format!("{e:#}")})
    );
}

async fn ls_entries(a: LsArgs) -> Result<u8> {
    let (addr, rest) = match split_target(&a.args, &a.from.from)? {
        (addr, rest) if rest.len() <= 1 => (addr, rest),
        _ => return Err(UsageError("ls takes a server and at most one path".into()).into()),
    };
    let path = rest.first().map_or("", String::as_str).trim_matches('/');
    let c = ClientConfig::new(&a.conn, None)?;
    let opts = c.options(None)?;
    let dial = c.dial(&addr).await?;
    // Entries are printed as their pages arrive: a listing of any size needs no memory.
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let json = a.json;
    let mut print = |e: barge_proto::wire::Entry| -> std::io::Result<()> {
        if json {
            let mut v = serde_json::to_value(&e)?;
            v["event"] = json!("entry");
            writeln!(out, "{v}")
        } else {
            let name = if e.dir {
                format!("{}/", e.path)
            } else {
                e.path.clone()
            };
            writeln!(
                out,
                "{:>12}  {}  {:64}  {}",
                if e.dir {
                    "-".to_owned()
                } else {
                    HumanBytes(e.size).to_string()
                },
                utc(e.mtime),
                printable(e.digest.as_deref().unwrap_or("-")),
                printable(&name)
            )
        }
    };
    if let Err((status, message)) =
        v1::list_each(&dial, path, a.recursive, &opts, &mut print).await?
    {
        eprintln!(
            "barge: {addr} refused to list {path:?}: {}",
            printable(&message)
        );
        if json {
            println!(
                "{}",
                json!({"event": "error", "code": exit::REFUSED, "status": status, "message": message})
            );
        }
        // Not found, forbidden, not a folder: the server refused (README: 4).
        return Ok(exit::REFUSED);
    }
    out.flush()?;
    Ok(exit::SUCCESS)
}

/// `rm`, `mv`, `mkdir`: which one, with its arguments.
pub enum Manage {
    Rm(RmArgs),
    Mv(ManageArgs),
    Mkdir(ManageArgs),
}

pub async fn manage(m: Manage, verbosity: Verbosity) -> Result<u8> {
    let (a, verb) = match &m {
        Manage::Rm(r) => (&r.manage, "removed"),
        Manage::Mv(a) => (a, "moved"),
        Manage::Mkdir(a) => (a, "created"),
    };
    let json = a.json;
    let result = manage_paths(&m, a, verb, verbosity).await;
    if json && let Err(e) = &result {
        json_error(e);
    }
    result
}

async fn manage_paths(m: &Manage, a: &ManageArgs, verb: &str, verbosity: Verbosity) -> Result<u8> {
    let (addr, paths) = split_target(&a.args, &a.from.from)?;
    let paths: Vec<String> = paths
        .iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect();
    let changes: Vec<Change> = match m {
        Manage::Rm(r) => paths
            .iter()
            .map(|path| Change::Remove {
                path: path.clone(),
                recursive: r.recursive,
            })
            .collect(),
        Manage::Mv(_) => match paths.as_slice() {
            [from, to] => vec![Change::Move {
                from: from.clone(),
                to: to.clone(),
            }],
            _ => return Err(UsageError("mv takes a server, FROM and TO".into()).into()),
        },
        Manage::Mkdir(_) => paths
            .iter()
            .map(|path| Change::Mkdir { path: path.clone() })
            .collect(),
    };
    if changes.is_empty() {
        return Err(UsageError(format!("name what to change on {addr}")).into());
    }
    let c = ClientConfig::new(&a.conn, None)?;
    let opts = c.options(None)?;
    let dial = c.dial(&addr).await?;
    let outcomes = v1::manage(&dial, &changes, &opts).await?;
    let mut refused = 0;
    for (change, outcome) in changes.iter().zip(&outcomes) {
        let what = match change {
            Change::Remove { path, .. } | Change::Mkdir { path } => path.clone(),
            Change::Move { from, to } => format!("{from} -> {to}"),
        };
        match outcome {
            Ok(freed) => {
                if a.json {
                    println!("{}", json!({"event": verb, "path": what, "bytes": freed}));
                } else if verbosity != Verbosity::Quiet {
                    println!("{verb} {}", printable(&what));
                }
            }
            Err((status, message)) => {
                refused += 1;
                eprintln!(
                    "barge: {} refused: {}",
                    printable(&what),
                    printable(message)
                );
                if a.json {
                    println!(
                        "{}",
                        json!({"event": "error", "code": exit::REFUSED, "path": what,
                               "status": status, "message": message})
                    );
                }
            }
        }
    }
    Ok(match refused {
        0 => exit::SUCCESS,
        n if n == outcomes.len() => exit::REFUSED,
        _ => exit::PARTIAL,
    })
}

pub async fn bench(a: BenchArgs) -> Result<u8> {
    let (addr, _) = split_target(&a.args, &a.from.from)?;
    let c = ClientConfig::new(&a.conn, None)?;
    let opts = c.options(None)?;
    let dial = c.dial(&addr).await?;
    let elapsed = v1::bench(&dial, a.size, &opts).await?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let bytes_per_s = a.size as f64 / secs;
    if a.json {
        println!(
            "{}",
            json!({"event": "bench", "server": addr, "bytes": a.size, "secs": round3(secs),
                   "bytes_per_second": bytes_per_s.round(), "bits_per_second": (bytes_per_s * 8.0).round()})
        );
    } else {
        println!(
            "barge bench to {addr}: {} in {secs:.3} s = {:.2} Gbit/s ({}/s), memory to memory",
            HumanBytes(a.size),
            bytes_per_s * 8.0 / 1e9,
            HumanBytes(bytes_per_s as u64)
        );
    }
    Ok(exit::SUCCESS)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the epoch.
fn utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Files at least this big get a bar of their own under the overall line.
const BIG_FILE: u64 = 64 << 20;

/// Renders transfer events: JSON lines on stdout, or for people an overall progress line (and a
/// bar per big file) on stderr, a line per file with `-v`, problems on stderr and a summary.
struct View {
    json: bool,
    verbosity: Verbosity,
    verb: &'static str,
    /// Where bars are drawn; `None` when they are not wanted.
    bars: Option<MultiProgress>,
    overall: Option<ProgressBar>,
    file_bar: Option<ProgressBar>,
    /// Files and bytes in the plan.
    total: (u64, u64),
    /// Files finished (sent, unchanged, failed, skipped) and bytes of finished files.
    finished: (u64, u64),
}

impl View {
    fn new(mode: ProgressMode, json: bool, verbosity: Verbosity, verb: &'static str) -> Self {
        let wanted = !json && verbosity != Verbosity::Quiet && crate::progress::bars_wanted(mode);
        let bars = wanted.then(|| {
            MultiProgress::with_draw_target(if mode == ProgressMode::Always {
                ProgressDrawTarget::term_like_with_hz(Box::new(console::Term::stderr()), 4)
            } else {
                ProgressDrawTarget::stderr()
            })
        });
        Self {
            json,
            verbosity,
            verb,
            bars,
            overall: None,
            file_bar: None,
            total: (0, 0),
            finished: (0, 0),
        }
    }

    /// A line for people on stderr, printed above the bars (never through them).
    fn say(&self, line: String) {
        match &self.bars {
            Some(bars) if self.overall.is_some() => {
                if bars.println(&line).is_err() {
                    eprintln!("{line}");
                }
            }
            _ => eprintln!("{line}"),
        }
    }

    /// A per-file line on stdout (`-v`), above the bars.
    fn tell(&self, line: String) {
        if let Some(bars) = &self.bars {
            bars.suspend(|| println!("{line}"));
        } else {
            println!("{line}");
        }
    }

    fn file_done(&mut self, size: u64) {
        self.finished.0 += 1;
        self.finished.1 += size;
        if let Some(bar) = self.file_bar.take() {
            bar.finish_and_clear();
        }
        if let Some(overall) = &self.overall {
            overall.set_position(self.finished.1);
            overall.set_prefix(format!("{}/{} files", self.finished.0, self.total.0));
        }
    }

    fn event(&mut self, e: Event) {
        if self.json {
            if let Ok(line) = serde_json::to_string(&e) {
                println!("{line}");
            }
            return;
        }
        match e {
            Event::Plan { files, bytes } => {
                self.total = (files, bytes);
                if let Some(bars) = &self.bars {
                    let bar = bars.add(ProgressBar::new(bytes));
                    bar.set_style(style(
                        "{prefix} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}",
                    ));
                    bar.set_prefix(format!("0/{files} files"));
                    self.overall = Some(bar);
                }
            }
            Event::Start { path, size, offset } => {
                if let (Some(bars), true) = (&self.bars, size >= BIG_FILE) {
                    let bar = bars.insert(0, ProgressBar::new(size));
                    bar.set_style(style(
                        "{msg:.30} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}",
                    ));
                    bar.set_message(printable(&path).into_owned());
                    bar.set_position(offset);
                    bar.reset_eta();
                    self.file_bar = Some(bar);
                }
                if let Some(overall) = &self.overall {
                    overall.set_position(self.finished.1 + offset);
                }
            }
            Event::Progress { done, .. } => {
                if let Some(bar) = &self.file_bar {
                    bar.set_position(done);
                }
                if let Some(overall) = &self.overall {
                    overall.set_position(self.finished.1 + done);
                }
            }
            Event::Done {
                path,
                stored,
                size,
                transferred,
                digest,
                secs,
            } => {
                self.file_done(size);
                if self.verbosity == Verbosity::Verbose {
                    let renamed = if stored != path {
                        format!(" as {}", printable(&stored))
                    } else {
                        String::new()
                    };
                    let resumed = if transferred < size {
                        format!(", {} moved", HumanBytes(transferred))
                    } else {
                        String::new()
                    };
                    self.tell(format!(
                        "{} {}{renamed} ({}) in {secs:.2} s, {}/s{resumed}, blake3 {}",
                        self.verb,
                        printable(&path),
                        HumanBytes(size),
                        HumanBytes((transferred as f64 / secs.max(1e-9)) as u64),
                        printable(&digest)
                    ));
                }
            }
            Event::Folder { .. } => {}
            Event::Unchanged { path, size } => {
                self.file_done(size);
                if self.verbosity == Verbosity::Verbose {
                    self.tell(format!("unchanged {}", printable(&path)));
                }
            }
            Event::Retry {
                attempt,
                of,
                wait_ms,
                reason,
            } => {
                if let Some(bar) = self.file_bar.take() {
                    bar.finish_and_clear();
                }
                if self.verbosity != Verbosity::Quiet {
                    self.say(format!(
                        "barge: {}; retry {attempt} of {of} in {:.1} s",
                        printable(&reason),
                        wait_ms as f64 / 1000.0
                    ));
                }
            }
            Event::Deleted { path } => {
                if self.verbosity != Verbosity::Quiet {
                    self.say(format!("barge: deleted {}", printable(&path)));
                }
            }
            Event::WouldTransfer { path, size, action } => {
                let what = match action.as_str() {
                    "folder" => "would create folder".to_owned(),
                    "delete" => "would delete".to_owned(),
                    "update" => format!("would update ({})", HumanBytes(size)),
                    _ if self.verb == "sent" => format!("would send ({})", HumanBytes(size)),
                    _ => format!("would fetch ({})", HumanBytes(size)),
                };
                println!("{what}: {}", printable(&path));
            }
            Event::Skipped { path, reason } => {
                if self.verbosity != Verbosity::Quiet {
                    self.say(format!(
                        "barge: skipped {}: {}",
                        printable(&path),
                        printable(&reason)
                    ));
                }
            }
            Event::Failed {
                path,
                status,
                message,
            } => {
                if let Some(bar) = self.file_bar.take() {
                    bar.finish_and_clear();
                }
                self.say(format!(
                    "barge: {} not transferred ({}): {}",
                    printable(&path),
                    json!(status).as_str().unwrap_or(""),
                    printable(&message)
                ));
            }
        }
    }

    fn finish(mut self, result: Result<Report, v1::TransferError>, started: Instant) -> Result<u8> {
        if let Some(bar) = self.file_bar.take() {
            bar.abandon();
        }
        // The overall line stays as the last state of the transfer, above the summary.
        if let Some(bar) = self.overall.take() {
            bar.abandon();
        }
        let secs = v1::millis(started.elapsed());
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                let e = anyhow::Error::from(e);
                if self.json {
                    json_error(&e);
                }
                return Err(e);
            }
        };
        if self.json {
            println!(
                "{}",
                json!({"event": "summary", "files": report.files, "folders": report.folders,
                       "bytes": report.bytes, "transferred": report.transferred,
                       "unchanged": report.unchanged, "updated": report.updated,
                       "deleted": report.deleted,
                       "would_transfer": report.would_transfer.0,
                       "would_transfer_bytes": report.would_transfer.1,
                       "failed": report.failed.len(), "skipped": report.skipped.len(),
                       "retries": report.retries, "secs": secs})
            );
        } else if self.verbosity != Verbosity::Quiet {
            eprintln!("barge: {}", summary(&report, self.verb, secs));
        }
        Ok(exit::for_report(&report))
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// `3 files sent (1 updated), 200 unchanged, 2 folders: 12.0 MiB moved of 1.2 GiB in 2.31 s
/// (5.2 MiB/s); 1 failed, 2 skipped` — the parts that are zero left out.
fn summary(r: &Report, verb: &str, secs: f64) -> String {
    let n = |count: u64, one: &str| format!("{count} {one}{}", if count == 1 { "" } else { "s" });
    if r.would_transfer.0 > 0 || (r.files == 0 && r.unchanged == 0 && r.would_transfer.1 > 0) {
        return format!(
            "dry run: {} ({}) would move, {} unchanged; nothing moved",
            n(r.would_transfer.0, "file"),
            HumanBytes(r.would_transfer.1),
            r.unchanged
        );
    }
    let mut line = format!("{} {verb}", n(r.files, "file"));
    if r.updated > 0 {
        line += &format!(" ({} updated)", r.updated);
    }
    if r.unchanged > 0 {
        line += &format!(", {} unchanged", r.unchanged);
    }
    if r.folders > 0 {
        line += &format!(", {}", n(r.folders, "folder"));
    }
    if r.deleted > 0 {
        line += &format!(", {} deleted", r.deleted);
    }
    line += &format!(
        ": {} moved of {} in {secs:.2} s",
        HumanBytes(r.transferred),
        HumanBytes(r.bytes)
    );
    if r.transferred > 0 {
        let rate = r.transferred as f64 / secs.max(1e-3);
        line += &format!(" ({}/s)", HumanBytes(rate as u64));
    }
    if !r.failed.is_empty() || !r.skipped.is_empty() {
        line += &format!("; {} failed, {} skipped", r.failed.len(), r.skipped.len());
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_says_what_happened_in_human_units() {
        use super::Report;
        let report = Report {
            files: 3,
            updated: 1,
            unchanged: 200,
            folders: 2,
            bytes: 3 << 30,
            transferred: 12 << 20,
            ..Report::default()
        };
        assert_eq!(
            super::summary(&report, "sent", 2.0),
            "3 files sent (1 updated), 200 unchanged, 2 folders: 12.00 MiB moved of 3.00 GiB \
             in 2.00 s (6.00 MiB/s)"
        );
        let one = Report {
            files: 1,
            bytes: 1000,
            transferred: 1000,
            ..Report::default()
        };
        assert_eq!(
            super::summary(&one, "fetched", 1.0),
            "1 file fetched: 1000 B moved of 1000 B in 1.00 s (1000 B/s)"
        );
    }

    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
