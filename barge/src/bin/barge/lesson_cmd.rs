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
    let entries =
        pick::list_files(&a.dir).with_context(|| format!("cannot list {}", a.dir.display()))?;
    if entries.is_empty() {
        bail!("{} has no files to upload", a.dir.display());
    }
    let mut renderer = Renderer::new(a.transfer.progress);
    // Connect first, as the lesson does, so an unreachable server is reported before any question;
    // but send on a connection opened at the first choice: a server closes a connection whose
    // first request does not come within its header timeout, and a person may take longer.
    drop(connect(&a.to, &a.conn, &a.transfer).await?);
    let mut sender = None;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut out = std::io::stdout();
    // The menu once, and again on an empty answer: not after every choice.
    let mut show_menu = true;
    let mut ended = false;
    loop {
        if show_menu {
            for (i, e) in entries.iter().enumerate() {
                writeln!(
                    out,
                    "{} {} ({})",
                    i + 1,
                    progress::printable(&e.name),
                    indicatif::HumanBytes(e.size)
                )?;
            }
            show_menu = false;
        }
        write!(
            out,
            "please choose a file to upload (q to quit; several: 1 3-5; empty: the list)>>>: "
        )?;
        out.flush()?;
        let Some(line) = lines.next_line().await? else {
            writeln!(out)?;
            ended = true;
            break;
        };
        if line.trim().is_empty() {
            show_menu = true;
            continue;
        }
        let chosen = match pick::parse_choices(&line, entries.len()) {
            Ok(None) => break,
            Ok(Some(chosen)) => chosen,
            Err(e) => {
                writeln!(out, "{e}")?;
                continue;
            }
        };
        for index in chosen {
            let path = &entries[index].path;
            if !a.legacy {
                let paths = vec![path.clone()];
                let sent = crate::v1_cmd::send_paths(
                    &a.to,
                    &a.conn,
                    &a.transfer,
                    paths,
                    false,
                    None,
                    verbosity,
                );
                if let Err(e) = sent.await {
                    eprintln!("barge: error: {}", crate::describe(&e));
                }
                continue;
            }
            if let Err(e) = upload_one(&a, &mut sender, path, &mut renderer).await {
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
