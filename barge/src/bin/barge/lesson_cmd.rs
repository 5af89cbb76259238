//! `barge send --legacy` and `barge pick`: the lesson's big-file upload (the client side; the
//! server is `barge serve`, which speaks both formats).

use std::path::Path;

use anyhow::{Context, Result, bail};
use barge::client::lesson::{self, ClientError, LegacySender, Outgoing};
use barge::pick;
use std::io::Write;

use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

use crate::args::{ClientArgs, PickArgs, SendArgs};
use crate::config::ClientConfig;
use crate::exit;
use crate::progress::{self, Renderer};

async fn connect(c: &ClientArgs) -> Result<barge::net::IdleTimeout<TcpStream>> {
    crate::args::split_target(&[], &c.to)?;
    let config = ClientConfig::try_from(c)?;
    config.lesson_only()?;
    let stream = barge::net::connect(&c.to, config.connect_timeout)
        .await
        .map_err(|source| ClientError::Connect {
            addr: c.to.clone(),
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
    let stream = connect(&a.client).await?;
    let mut renderer = Renderer::new(a.client.progress);
    lesson::send_files(stream, files, |e| renderer.on_event(e)).await?;
    Ok(exit::SUCCESS)
}

pub async fn pick(a: PickArgs) -> Result<u8> {
    let entries =
        pick::list_files(&a.dir).with_context(|| format!("cannot list {}", a.dir.display()))?;
    if entries.is_empty() {
        bail!("{} has no files to upload", a.dir.display());
    }
    let mut renderer = Renderer::new(a.client.progress);
    // Connect first, as the lesson does, so an unreachable server is reported before any question;
    // but send on a connection opened at the first choice: a server closes a connection whose
    // first request does not come within its header timeout, and a person may take longer.
    drop(connect(&a.client).await?);
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
                if let Err(e) =
                    crate::v1_cmd::send_paths(&a.client, &a.transfer, paths, false).await
                {
                    eprintln!("barge: error: {}", crate::describe(&e));
                }
                continue;
            }
            if let Err(e) = upload_one(&a.client, &mut sender, path, &mut renderer).await {
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
