//! `barge serve`: the file server (barge v1 and the lesson's format on one port, through one
//! transfer core over a local folder or an S3 bucket).

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
    if let Some(s3) = c.s3.clone() {
        return serve_bucket(c, s3, listener, http).await;
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
    let config = announce(
        &c,
        storage.dir(),
        &shown.display().to_string(),
        &listener,
        http.as_ref(),
    )?;
    // Abandoned partial uploads are swept at start (by `LocalStore::open`) and then regularly.
    let _sweeper = storage.sweep_regularly();
    let service = FileService::local(storage, c.policy.clone());
    run(c, service, config, listener, http).await
}

/// Sets up TLS (the certificate kept in `dir`'s state folder unless --cert/--key), warns about
/// the lesson's format, and prints the one line that says where the server listens and stores:
/// what both the folder and the bucket server do before serving. Returns the framework's policy.
fn announce(
    c: &ServeConfig,
    dir: &std::path::Path,
    storing: &str,
    listener: &tokio::net::TcpListener,
    http: Option<&tokio::net::TcpListener>,
) -> Result<server::ServerConfig> {
    let mut config = c.server.clone();
    let mut what = format!(", storing files in {storing}");
    if c.tls {
        let identity = crate::identity::server_identity(
            &dir.join(barge::store::STATE_DIR).join("tls"),
            c.cert_key.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .context("cannot set up TLS")?;
        what.push_str(&format!(", TLS certificate {}", identity.fingerprint));
        config.tls = Some(identity.config);
    }
    warn_legacy(c);
    if let Some(h) = http {
        what.push_str(&format!(", HTTP on {}", http_url(h, c.tls)?));
    }
    crate::announce(&format!("listening on {}{what}", listener.local_addr()?))?;
    Ok(config)
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
async fn run(
    c: ServeConfig,
    service: FileService,
    config: server::ServerConfig,
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
) -> Result<u8> {
    let mut service = service.with_legacy(c.legacy).with_tls_required(c.tls);
    if let Some(tokens) = c.tokens {
        service = service
            .with_tokens(tokens, FailureBrake::default())
            .context("cannot set up the tokens' root folders")?;
    }
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
async fn serve_bucket(
    c: ServeConfig,
    s3: barge::store::S3Config,
    listener: tokio::net::TcpListener,
    http: Option<tokio::net::TcpListener>,
) -> Result<u8> {
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
    let config = announce(&c, &c.storage.dir, &shown, &listener, http.as_ref())?;
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
    run(c, service, config, listener, http).await
}
