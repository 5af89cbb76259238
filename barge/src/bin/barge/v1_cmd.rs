//! `barge send`, `barge get`, `barge ls` and `barge bench` over barge's protocol (v1): verified,
//! resumable transfers, rendered as progress bars and lines for people or JSON lines for scripts.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use barge::client::v1::{self, Event, Options, Report};
use indicatif::ProgressBar;
use serde_json::json;

use crate::args::{
    BenchArgs, ClientArgs, GetArgs, LsArgs, ProgressMode, SendArgs, TransferArgs, split_target,
};
use crate::config::ClientConfig;
use crate::exit;
use crate::progress::{file_bar, printable};

/// A server given positionally wins over `--to`; `--to` is the default otherwise.
fn target(args: &[String], c: &ClientArgs) -> Result<(String, Vec<String>)> {
    Ok(split_target(args, &c.to)?)
}

pub async fn send(a: SendArgs) -> Result<u8> {
    send_paths(&a.client, &a.transfer, a.files, a.follow_links).await
}

/// Uploads files and folders with barge's protocol and renders the outcome.
pub async fn send_paths(
    client: &ClientArgs,
    t: &TransferArgs,
    paths: Vec<std::path::PathBuf>,
    follow_links: bool,
) -> Result<u8> {
    let (addr, _) = split_target(&[], &client.to)?;
    let c = ClientConfig::try_from(client)?;
    let opts = Options {
        follow_links,
        ..c.options(Some(t))?
    };
    let mut view = View::new(client.progress, t.json, "sent");
    let started = Instant::now();
    let dial = c.dial(&addr)?;
    let result = v1::send(&dial, &paths, &opts, &mut |e| view.event(e)).await;
    view.finish(result, started)
}

pub async fn get(a: GetArgs) -> Result<u8> {
    let (addr, names) = target(&a.args, &a.client)?;
    if names.is_empty() {
        bail!("name at least one file or folder to get");
    }
    let c = ClientConfig::try_from(&a.client)?;
    let mut opts = c.options(Some(&a.transfer))?;
    if a.overwrite {
        opts.on_existing = v1::OnExisting::Overwrite;
    }
    opts.delete = a.delete;
    let mut view = View::new(a.client.progress, a.transfer.json, "got");
    let started = Instant::now();
    let dial = c.dial(&addr)?;
    let result = v1::get(&dial, &names, &a.out, &opts, &mut |e| view.event(e)).await;
    view.finish(result, started)
}

pub async fn ls(a: LsArgs) -> Result<u8> {
    let json = a.json;
    let result = ls_entries(a).await;
    if json && let Err(e) = &result {
        // Scripts read stdout: a failure is an event there too.
        println!(
            "{}",
            json!({"event": "error", "code": exit::code_for(e), "message": format!("{e:#}")})
        );
    }
    result
}

async fn ls_entries(a: LsArgs) -> Result<u8> {
    let (addr, rest) = match split_target(&a.args, &a.client.to)? {
        (addr, rest) if rest.len() <= 1 => (addr, rest),
        _ => bail!("ls takes at most a server and one path"),
    };
    let path = rest.first().map_or("", String::as_str).trim_matches('/');
    let c = ClientConfig::try_from(&a.client)?;
    let opts = c.options(None)?;
    let dial = c.dial(&addr)?;
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
                "{:>14}  {}  {:64}  {}",
                if e.dir {
                    "-".to_owned()
                } else {
                    e.size.to_string()
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

pub async fn bench(a: BenchArgs) -> Result<u8> {
    let (addr, _) = split_target(&a.args, &a.client.to)?;
    let c = ClientConfig::try_from(&a.client)?;
    let opts = c.options(None)?;
    let dial = c.dial(&addr)?;
    let elapsed = v1::bench(&dial, a.size, &opts).await?;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let bytes_per_s = a.size as f64 / secs;
    if a.json {
        println!(
            "{}",
            json!({"event": "bench", "server": addr, "bytes": a.size, "secs": secs,
                   "bytes_per_second": bytes_per_s, "bits_per_second": bytes_per_s * 8.0})
        );
    } else {
        println!(
            "barge bench to {addr}: {} bytes in {secs:.3}s = {:.2} Gbit/s ({:.0} MB/s), memory to memory",
            a.size,
            bytes_per_s * 8.0 / 1e9,
            bytes_per_s / 1e6
        );
    }
    Ok(exit::SUCCESS)
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

/// Renders transfer events: JSON lines, or bars on stderr plus a line per file on stdout.
struct View {
    json: bool,
    bars: Option<ProgressMode>,
    verb: &'static str,
    bar: Option<ProgressBar>,
}

impl View {
    fn new(mode: ProgressMode, json: bool, verb: &'static str) -> Self {
        let bars = crate::progress::bars_wanted(mode).then_some(mode);
        Self {
            json,
            bars,
            verb,
            bar: None,
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
            Event::Start { path, size, offset } => {
                if let Some(mode) = self.bars {
                    let bar = file_bar(&path, size, mode);
                    bar.set_position(offset);
                    bar.reset_eta();
                    self.bar = Some(bar);
                }
            }
            Event::Progress { done, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
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
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let renamed = if stored != path {
                    format!(" as {}", printable(&stored))
                } else {
                    String::new()
                };
                let resumed = if transferred < size {
                    format!(", resumed: {transferred} bytes sent")
                } else {
                    String::new()
                };
                println!(
                    "{} {}{renamed} ({size} bytes) in {secs:.2}s, {:.1} MB/s{resumed}, blake3 {}",
                    self.verb,
                    printable(&path),
                    transferred as f64 / secs.max(1e-9) / 1e6,
                    printable(&digest)
                );
            }
            Event::Folder { .. } => {}
            Event::Retry {
                attempt,
                of,
                wait_ms,
                reason,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
                eprintln!(
                    "barge: {}; retry {attempt} of {of} in {:.1}s",
                    printable(&reason),
                    wait_ms as f64 / 1000.0
                );
            }
            // Counted in the summary; `--json` lists each.
            Event::Unchanged { .. } => {}
            Event::Deleted { path } => eprintln!("barge: deleted {}", printable(&path)),
            Event::WouldTransfer { path, size, action } => {
                let what = match action.as_str() {
                    "folder" => "would create folder".to_owned(),
                    "delete" => "would delete".to_owned(),
                    "update" => format!("would update ({size} bytes)"),
                    _ if self.verb == "sent" => format!("would send ({size} bytes)"),
                    _ => format!("would fetch ({size} bytes)"),
                };
                println!("{what}: {}", printable(&path));
            }
            Event::Skipped { path, reason } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
                eprintln!(
                    "barge: skipped {}: {}",
                    printable(&path),
                    printable(&reason)
                );
            }
            Event::Failed {
                path,
                status,
                message,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.abandon();
                }
                eprintln!(
                    "barge: {} not transferred ({}): {}",
                    printable(&path),
                    json!(status).as_str().unwrap_or(""),
                    printable(&message)
                );
            }
        }
    }

    fn finish(mut self, result: Result<Report, v1::TransferError>, started: Instant) -> Result<u8> {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
        let secs = v1::millis(started.elapsed());
        match result {
            Ok(report) => {
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
                } else if report.files + report.folders + report.unchanged > 1
                    || !report.failed.is_empty()
                    || !report.skipped.is_empty()
                {
                    eprintln!(
                        "barge: {} files {} ({} updated), {} unchanged, {} folders; {} of {} bytes \
                         moved in {secs:.2}s; {} failed, {} skipped",
                        report.files,
                        self.verb,
                        report.updated,
                        report.unchanged,
                        report.folders,
                        report.transferred,
                        report.bytes,
                        report.failed.len(),
                        report.skipped.len()
                    );
                }
                Ok(exit::for_report(&report))
            }
            Err(e) => {
                let e = anyhow::Error::from(e);
                if self.json {
                    println!(
                        "{}",
                        json!({"event": "error", "code": exit::code_for(&e), "message": format!("{e:#}")})
                    );
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
