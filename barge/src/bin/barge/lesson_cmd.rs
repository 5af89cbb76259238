//! `barge send --legacy` and `barge pick`: the lesson's big-file upload (the client side; the
//! server is `barge serve`, which speaks both formats).

use std::path::Path;

use anyhow::{Context, Result, bail};
use barge::client::lesson::{self, ClientError, LegacySender, Outgoing};
use barge::pick;
use std::io::Write;

use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

use crate::args::{ConnArgs, PickArgs, SendArgs, TransferArgs};
use crate::config::ClientConfig;
use crate::exit;
use crate::progress::{self, Renderer};

async fn connect(
    to: &str,
    c: &ConnArgs,
    t: &TransferArgs,
) -> Result<barge::net::IdleTimeout<TcpStream>> {
    crate::args::split_target(&[], to)?;
    let config = ClientConfig::new(c, t.bwlimit)?;
    config.lesson_only()?;
    let to = &crate::discover_cmd::resolve(to, config.name_wait()).await?;
    let stream = barge::net::connect(to, config.connect_timeout)
        .await
        .map_err(|source| ClientError::Connect {
            addr: to.to_owned(),
            source,
        })?;
    Ok(barge::net::IdleTimeout::new(stream, config.io_timeout))
}

pub async fn send(a: SendArgs) -> Result<u8> {
    // Check every file before connecting, so a typo fails fast and sends nothing.
    let files = a
        .files
        .iter()
        .map(|p| Outgoing::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    if a.dest.is_some() || a.name.is_some() {
        return Err(crate::config::UsageError(
            "the lesson's format (--legacy) has no folders and no stdin: drop --legacy to use \
             --dest or --name"
                .into(),
        )
        .into());
    }
    let stream = connect(&a.to, &a.conn, &a.transfer).await?;
    let mut renderer = Renderer::new(a.transfer.progress);
    lesson::send_files(stream, files, |e| renderer.on_event(e)).await?;
    Ok(exit::SUCCESS)
}

pub async fn pick(a: PickArgs, verbosity: crate::v1_cmd::Verbosity) -> Result<u8> {
    let top = a.dir.clone();
    let mut here = top.clone();
    let mut entries = menu(&here)?;
    if entries.is_empty() {
        bail!("{} has nothing to upload", a.dir.display());
    }
    let mut renderer = Renderer::new(a.transfer.progress);
    // Connect first, as the lesson does, so an unreachable server is reported before any question;
    // but send on a connection opened at the first choice: a server closes a connection whose
    // first request does not come within its header timeout, and a person may take longer.
    drop(connect(&a.to, &a.conn, &a.transfer).await?);
    let mut sender = None;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = std::io::stdout();
    // The menu once, and again on an empty answer or in another folder: not after every choice.
    let mut show_menu = true;
    let mut ended = false;
    loop {
        let below_top = here != top;
        if show_menu {
            if below_top {
                writeln!(
                    out,
                    "0 ../ (back to {})",
                    progress::printable(&parent_name(&here))
                )?;
            }
            for (i, e) in entries.iter().enumerate() {
                if e.dir {
                    writeln!(out, "{} {}/", i + 1, progress::printable(&e.name))?;
                } else {
                    writeln!(
                        out,
                        "{} {} ({})",
                        i + 1,
                        progress::printable(&e.name),
                        indicatif::HumanBytes(e.size)
                    )?;
                }
            }
            show_menu = false;
        }
        write!(
            out,
            "please choose a file to upload (q to quit; several: 1 3-5; a folder alone enters it; \
             empty: the list)>>>: "
        )?;
        out.flush()?;
        let Some(line) = lines.next_line().await? else {
            writeln!(out)?;
            ended = true;
            break;
        };
        let answer = line.trim();
        if answer.is_empty() {
            show_menu = true;
            continue;
        }
        if below_top && (answer == "0" || answer == "..") {
            here.pop();
            entries = menu(&here)?;
            show_menu = true;
            continue;
        }
        let chosen = match pick::parse_choices(answer, entries.len()) {
            Ok(None) => break,
            Ok(Some(chosen)) => chosen,
            Err(e) => {
                writeln!(out, "{e}")?;
                continue;
            }
        };
        if let [only] = chosen[..]
            && entries[only].dir
        {
            here = entries[only].path.clone();
            entries = menu(&here)?;
            show_menu = true;
            continue;
        }
        for index in chosen {
            let entry = &entries[index];
            if !a.legacy {
                let paths = vec![entry.path.clone()];
                let sent = crate::v1_cmd::send_paths(
                    &a.to,
                    &a.conn,
                    &a.transfer,
                    paths,
                    Default::default(),
                    verbosity,
                );
                if let Err(e) = sent.await {
                    eprintln!("barge: error: {}", crate::describe(&e));
                }
                continue;
            }
            if entry.dir {
                writeln!(
                    out,
                    "{}/ is a folder: the lesson's format sends files only (choose it alone to enter it)",
                    progress::printable(&entry.name)
                )?;
                continue;
            }
            if let Err(e) = upload_one(&a, &mut sender, &entry.path, &mut renderer).await {
                // The connection is gone; the next choice opens a new one.
                sender = None;
                eprintln!("barge: error: {}", crate::describe(&e));
            }
        }
    }
    if let Some(sender) = sender {
        sender.finish().await?;
    }
    if ended {
        // Input ran out before `q`: said, and told apart from a chosen end (as Ctrl-C is).
        eprintln!("barge: end of input before q: stopping");
        return Ok(exit::INTERRUPTED);
    }
    Ok(exit::SUCCESS)
}

/// The entries of `dir` for the menu.
fn menu(dir: &Path) -> Result<Vec<pick::Entry>> {
    pick::list_entries(dir).with_context(|| format!("cannot list {}", dir.display()))
}

fn parent_name(dir: &Path) -> String {
    dir.parent()
        .and_then(|p| p.file_name())
        .map_or_else(|| "..".to_owned(), |n| n.to_string_lossy().into_owned())
}

async fn upload_one(
    a: &PickArgs,
    sender: &mut Option<LegacySender<barge::net::IdleTimeout<TcpStream>>>,
    path: &Path,
    renderer: &mut Renderer,
) -> Result<()> {
    let file = Outgoing::open(path)?;
    if sender.is_none() {
        *sender = Some(LegacySender::new(
            connect(&a.to, &a.conn, &a.transfer).await?,
        ));
    }
    if let Some(s) = sender.as_mut() {
        s.send(file, &mut |e| renderer.on_event(e)).await?;
    }
    Ok(())
}
