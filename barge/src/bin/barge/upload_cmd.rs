//! `barge serve`, `barge send` and `barge pick`: the lesson's big-file upload.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use barge::auth::FailureBrake;
use barge::client::lesson::{self, ClientError, LegacySender, Outgoing};
use barge::pick::{self, Choice};
use barge::server;
use barge::service::files::FileService;
use barge::store::{LocalStore, Quota, bytes_stored};
use std::io::Write;

use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;

use crate::args::{ClientArgs, PickArgs, SendArgs, ServeArgs};

use crate::config::{ClientConfig, ServeConfig};
use crate::exit;
use crate::progress::{self, Renderer};

pub async fn serve(a: ServeArgs) -> Result<u8> {
    let c = ServeConfig::try_from(a)?;
    crate::check_open_files(&c.server);
    let dir = c.storage.dir.clone();
    let mut storage_config = c.storage;
    if let Some(limit) = c.quota {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let used =
            bytes_stored(&dir).with_context(|| format!("cannot measure {}", dir.display()))?;
        if used > limit {
            tracing::warn!(used, quota = limit, "the folder is already over its quota");
        }
        storage_config.quota = Some(Quota::new(limit, used));
    }
    let storage = LocalStore::open(storage_config)
        .with_context(|| format!("cannot use {} for storage", dir.display()))?;
    let mut config = c.server;
    let shown = std::fs::canonicalize(storage.dir()).unwrap_or_else(|_| storage.dir().to_owned());
    let mut what = format!(", storing files in {}", shown.display());
    if c.tls {
        let identity = crate::identity::server_identity(
            &storage.dir().join(barge::store::STATE_DIR).join("tls"),
            c.cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .context("cannot set up TLS")?;
        what.push_str(&format!(", TLS certificate {}", identity.fingerprint));
        config.tls = Some(identity.config);
    }
    // The lesson's format cannot authenticate or encrypt: only on loopback without tokens, unless
    // asked for.
    if c.legacy_forced {
        tracing::warn!(
            "--legacy: the lesson's upload format is on; it has no authentication or encryption, \
             so anyone who reaches {} can upload files",
            c.addr
        );
    } else if !c.legacy {
        tracing::info!(
            "the lesson's upload format is off here (no authentication); --legacy turns it on"
        );
    }
    let listener = crate::listen(c.addr, &what)?;
    // Abandoned partial uploads are swept at start (by `LocalStore::open`) and then regularly.
    let _sweeper = storage.sweep_regularly();
    let mut service = FileService::local(storage, c.policy)
        .with_legacy(c.legacy)
        .with_tls_required(c.tls);
    if let Some(tokens) = c.tokens {
        service = service
            .with_tokens(tokens, FailureBrake::default())
            .context("cannot set up the tokens' root folders")?;
    }
    server::serve(
        listener,
        Arc::new(service),
        config,
        server::shutdown_signal(),
    )
    .await;
    Ok(exit::SUCCESS)
}

async fn connect(c: &ClientArgs) -> Result<barge::net::IdleTimeout<TcpStream>> {
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
    if !a.legacy {
        return crate::transfer_cmd::send(a).await;
    }
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
        let path = &entries[index].path;
        if !a.legacy {
            if let Err(e) =
                crate::transfer_cmd::send_paths(&a.client, &a.transfer, vec![path.clone()]).await
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
    if let Some(sender) = sender {
        sender.finish().await?;
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
