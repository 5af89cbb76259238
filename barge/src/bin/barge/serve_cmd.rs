//! `barge serve`: the file server (barge v1 and the lesson's format on one port, the HTTP face
//! and the LocalSend receiver on theirs, all through one transfer core over a local folder or an
//! S3 bucket), and its LAN presence (`--announce`).

use std::sync::Arc;

use anyhow::{Context, Result};
use barge::auth::FailureBrake;
use barge::server;
use barge::service::files::FileService;
use barge::service::http::HttpFace;
use barge::store::{LocalStore, Quota, S3Store, bytes_stored};

use crate::args::ServeArgs;
use crate::config::ServeConfig;
use crate::exit;

pub async fn serve(a: ServeArgs) -> Result<u8> {
    let c = ServeConfig::try_from(a)?;
    crate::check_open_files(&c.server);
    let dir = c.storage.dir.clone();
    // Checked before anything is created: a file in the way, or a busy port, leaves no folder.
    if let Ok(meta) = std::fs::metadata(&dir)
        && !meta.is_dir()
    {
        anyhow::bail!("--dir {}: exists and is not a folder", dir.display());
    }
    let listener = crate::bind(c.addr)?;
    // Both ports are bound before anything is created.
    let http = match c.http {
        Some(addr) => Some(crate::bind(addr)?),
        None => None,
    };
    let localsend = match &c.localsend {
        Some((addr, _)) => Some(crate::bind(*addr)?),
        None => None,
    };
    let ports = Ports {
        listener,
        http,
        localsend,
    };
    if let Some(s3) = c.s3.clone() {
        return serve_bucket(c, s3, ports).await;
    }
    let mut storage_config = c.storage.clone();
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
    let shown = std::fs::canonicalize(storage.dir()).unwrap_or_else(|_| storage.dir().to_owned());
    let started = start_up(&c, storage.dir(), &shown.display().to_string(), &ports)?;
    // Abandoned partial uploads are swept at start (by `LocalStore::open`) and then regularly.
    let _sweeper = storage.sweep_regularly();
    let service = FileService::local(storage, c.policy.clone());
    run(c, service, started, ports).await
}

/// The listeners, bound before anything is created.
struct Ports {
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
    localsend: Option<tokio::net::TcpListener>,
}

/// What start-up prepared: the framework's policy (with TLS if --tls) and the certificate
/// (also made for LocalSend, which is HTTPS whatever --tls says).
struct Started {
    config: server::ServerConfig,
    identity: Option<barge::tls::ServerIdentity>,
}

/// Sets up TLS (the certificate kept in `dir`'s state folder unless --cert/--key), warns about
/// the lesson's format, and prints the one line that says where the server listens and stores:
/// what both the folder and the bucket server do before serving.
fn start_up(
    c: &ServeConfig,
    dir: &std::path::Path,
    storing: &str,
    ports: &Ports,
) -> Result<Started> {
    let mut config = c.server.clone();
    let mut what = format!(", storing files in {storing}");
    let mut identity = None;
    if c.tls || c.localsend.is_some() {
        let id = crate::identity::server_identity(
            &dir.join(barge::store::STATE_DIR).join("tls"),
            c.cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .context("cannot set up TLS")?;
        let which = if c.tls { "TLS" } else { "LocalSend's TLS" };
        what.push_str(&format!(", {which} certificate {}", id.fingerprint));
        if c.tls {
            config.tls = Some(id.config.clone());
        }
        identity = Some(id);
    }
    warn_legacy(c);
    if let Some(h) = &ports.http {
        what.push_str(&format!(", HTTP on {}", http_url(h, c.tls)?));
    }
    if let Some(l) = &ports.localsend {
        what.push_str(&format!(", LocalSend on https://{}", l.local_addr()?));
    }
    if c.announce.is_some() {
        what.push_str(&format!(", announced as {:?}", c.name));
    }
    crate::announce(&format!(
        "listening on {}{what}",
        ports.listener.local_addr()?
    ))?;
    Ok(Started { config, identity })
}

fn http_url(listener: &tokio::net::TcpListener, tls: bool) -> Result<String> {
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{}", listener.local_addr()?))
}

/// The lesson's format cannot authenticate or encrypt: only on loopback without tokens, unless
/// asked for.
fn warn_legacy(c: &ServeConfig) {
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
}

/// Serves `service` with the front ends, tokens and TLS the configuration asks for.
async fn run(c: ServeConfig, service: FileService, started: Started, ports: Ports) -> Result<u8> {
    let Ports {
        listener,
        http,
        localsend,
    } = ports;
    let config = started.config;
    let mut service = service.with_legacy(c.legacy).with_tls_required(c.tls);
    if let Some(tokens) = c.tokens.clone() {
        service = service
            .with_tokens(tokens, FailureBrake::default())
            .context("cannot set up the tokens' root folders")?;
    }
    let _beacon = match c.announce {
        Some((every, port)) => Some(beacon(
            &c,
            every,
            port,
            &listener,
            http.as_ref(),
            &started.identity,
        )?),
        None => None,
    };
    let _localsend = match (localsend, &started.identity) {
        (Some(l), Some(identity)) => Some(serve_localsend(&c, &service, &config, identity, l)?),
        _ => None,
    };
    // The HTTP face: the same core (store, policy, tokens), the same certificate.
    let _http = http.map(|listener| {
        let face = HttpFace::new(service.core().clone())
            .with_cors(c.http_cors.clone())
            .with_expiry(c.storage.partial_ttl);
        tokio::spawn(barge::service::http::serve(
            listener,
            Arc::new(face),
            config.clone(),
            server::shutdown_signal(),
        ))
    });
    server::serve(
        listener,
        Arc::new(service),
        config,
        server::shutdown_signal(),
    )
    .await;
    Ok(exit::SUCCESS)
}

/// `serve --store s3://...`: the same service over a bucket. Nothing of the files is kept
/// locally; `--dir` holds only the self-signed TLS certificate (servers sharing a bucket behind
/// one address share a certificate with --cert/--key).
async fn serve_bucket(c: ServeConfig, s3: barge::store::S3Config, ports: Ports) -> Result<u8> {
    let shown = format!(
        "s3://{}/{}{}",
        s3.bucket,
        s3.prefix,
        s3.endpoint
            .as_deref()
            .map(|e| format!(" at {e}"))
            .unwrap_or_default()
    );
    let mut s3 = s3;
    let probe = S3Store::open(s3.clone()).context("cannot use the bucket")?;
    probe
        .check()
        .await
        .with_context(|| format!("cannot reach {shown}"))?;
    if let Some(limit) = c.quota {
        let used = probe
            .bytes_stored()
            .await
            .context("cannot measure the bucket")?;
        s3.quota = Some(Quota::new(limit, used));
    }
    let store = S3Store::open(s3).context("cannot use the bucket")?;
    let started = start_up(&c, &c.storage.dir, &shown, &ports)?;
    // Abandoned multipart uploads are aborted at start and then every hour.
    let expiring = store.clone();
    let _expiry = tokio::spawn(async move {
        loop {
            match barge::store::Store::expire(&expiring).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "aborted abandoned uploads"),
                Err(e) => tracing::warn!(error = %e, "cannot expire abandoned uploads"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    });
    let service = FileService::new(barge::transfer::Core::new(
        Arc::new(store),
        c.policy.clone(),
    ));
    run(c, service, started, ports).await
}

/// Starts the LAN beacon (`--announce`): name, ports, TLS fingerprint (a hint), tokens.
fn beacon(
    c: &ServeConfig,
    every: u32,
    port: u16,
    listener: &tokio::net::TcpListener,
    http: Option<&tokio::net::TcpListener>,
    identity: &Option<barge::tls::ServerIdentity>,
) -> Result<AbortOnDrop> {
    let announcement = barge_proto::lan::Announcement {
        name: c.name.clone(),
        id: barge::lan::random_u64(),
        port: listener.local_addr()?.port(),
        http: http.map(|h| h.local_addr().map(|a| a.port())).transpose()?,
        versions: vec![barge_proto::wire::VERSION],
        tls: identity
            .as_ref()
            .filter(|_| c.tls)
            .map(|i| i.fingerprint.to_string()),
        tokens: c.tokens.is_some(),
        every,
        nonce: None,
    };
    barge_proto::lan::encode_announcement(&announcement).context("--name: too long to announce")?;
    let (ipv4, ipv6) = barge::lan::beacon::BeaconConfig::families(c.addr.ip());
    let config = barge::lan::beacon::BeaconConfig {
        announcement,
        port,
        answers_per_second: 32,
        ipv4,
        ipv6,
    };
    Ok(AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = barge::lan::beacon::run(config).await {
            tracing::warn!(error = %e, "cannot announce on the LAN");
        }
    })))
}

/// Starts the LocalSend receiver (HTTPS with the server's certificate) and, unless it listens
/// on loopback only, its presence on LocalSend's multicast group.
fn serve_localsend(
    c: &ServeConfig,
    service: &FileService,
    config: &server::ServerConfig,
    identity: &barge::tls::ServerIdentity,
    listener: tokio::net::TcpListener,
) -> Result<Vec<AbortOnDrop>> {
    use barge::service::localsend::{Admission, LocalSendFace};
    use barge_proto::localsend as ls;
    let addr = listener.local_addr()?;
    let me = ls::DeviceInfo {
        alias: c.name.clone(),
        version: ls::VERSION.into(),
        device_model: Some("barge".into()),
        device_type: Some("server".into()),
        // The protocol's fingerprint: the certificate's SHA-256, bare hex.
        fingerprint: identity
            .fingerprint
            .to_string()
            .trim_start_matches("SHA256:")
            .to_owned(),
        port: Some(addr.port()),
        protocol: Some("https".into()),
        download: false,
        announce: None,
    };
    let admission = match (&c.localsend, &c.tokens) {
        (Some((_, Some(pin))), _) => Admission::Pin(pin.clone()),
        (_, Some(_)) => Admission::Tokens,
        _ => Admission::Neighbours,
    };
    let face = LocalSendFace::new(service.core().clone(), me.clone(), admission);
    let mut config = config.clone();
    config.tls = Some(identity.config.clone());
    let mut tasks = vec![AbortOnDrop(tokio::spawn(barge::service::http::serve(
        listener,
        Arc::new(face),
        config,
        server::shutdown_signal(),
    )))];
    if !addr.ip().is_loopback() {
        let group = std::net::Ipv4Addr::from(ls::GROUP);
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = barge::service::localsend::multicast(me, group, ls::PORT).await {
                tracing::warn!(error = %e, "LocalSend apps will not see this server by multicast");
            }
        })));
    }
    Ok(tasks)
}

/// A background task stopped when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
