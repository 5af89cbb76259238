//! Validated configuration: a command's arguments checked once, here, into the values the library
//! takes (ripgrep's low-level args -> high-level config). A value clap accepted but that cannot be
//! right is a [`UsageError`], which exits 2 like clap's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use barge::auth::Tokens;
use barge::server::ServerConfig;
use barge::service::files::lesson_format_by_default;
use barge::store::{LocalConfig, OnConflict};
use barge::transfer::Policy;

use crate::args::{Conflict, FrameworkArgs, ServeArgs};

/// An argument value that cannot be used (after clap's own parsing).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A positive number of seconds from a flag.
pub fn seconds(value: f64, flag: &str) -> Result<Duration, UsageError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| UsageError(format!("{flag} must be a positive number of seconds")))
}

/// The framework's policy from its flags.
pub fn server_config(f: &FrameworkArgs) -> Result<ServerConfig, UsageError> {
    if f.max_connections == 0 {
        return Err(UsageError("--max-connections must be at least 1".into()));
    }
    if f.max_connections_per_ip == Some(0) {
        return Err(UsageError(
            "--max-connections-per-ip must be at least 1".into(),
        ));
    }
    Ok(ServerConfig {
        max_connections: f.max_connections,
        idle_timeout: seconds(f.idle_timeout, "--idle-timeout")?,
        shutdown_grace: seconds(f.shutdown_grace, "--shutdown-grace")?,
        header_timeout: seconds(f.header_timeout, "--header-timeout")?,
        max_connections_per_ip: f.max_connections_per_ip,
        tls: None,
        bwlimit: f.bwlimit,
        bwlimit_per_connection: f.bwlimit_per_connection,
    })
}

/// Everything `barge serve` needs, checked.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where to listen.
    pub addr: SocketAddr,
    /// The store's rules (its quota is attached once the folder has been measured).
    pub storage: LocalConfig,
    /// The transfer core's rules.
    pub policy: Policy,
    /// `--quota`: the most bytes stored.
    pub quota: Option<u64>,
    /// The framework's policy.
    pub server: ServerConfig,
    /// The tokens, loaded and checked.
    pub tokens: Option<Tokens>,
    /// Serve TLS (`--tls`, or implied by `--cert`).
    pub tls: bool,
    /// A certificate chain and key to serve instead of the self-signed one.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// Accept the lesson's format.
    pub legacy: bool,
    /// `--legacy` turned it on where it is off by default (worth a warning).
    pub legacy_forced: bool,
}

impl TryFrom<ServeArgs> for ServeConfig {
    type Error = anyhow::Error;

    fn try_from(a: ServeArgs) -> Result<Self> {
        let tokens = match &a.token_file {
            Some(path) => Some(Tokens::load(path)?),
            None => None,
        };
        let by_default = lesson_format_by_default(a.addr.ip(), tokens.is_some());
        let policy = Policy {
            on_conflict: match a.on_conflict {
                Conflict::Rename => OnConflict::Rename,
                Conflict::Overwrite => OnConflict::Overwrite,
                Conflict::Fail => OnConflict::Fail,
            },
            max_file_size: a.max_file_size,
            no_downloads: a.no_download,
        };
        let storage = LocalConfig {
            writers: crate::writers().clone(),
            fsync: !a.no_fsync,
            partial_ttl: seconds(a.partial_ttl, "--partial-ttl")?,
            checkpoint_bytes: a.checkpoint.max(barge_proto::tree::CHUNK),
            ..LocalConfig::new(&a.dir)
        };
        Ok(Self {
            addr: a.addr,
            storage,
            policy,
            quota: a.quota,
            server: server_config(&a.framework)?,
            tokens,
            tls: a.tls || a.cert.is_some(),
            cert_key: a.cert.zip(a.key),
            legacy: a.legacy || by_default,
            legacy_forced: a.legacy && !by_default,
        })
    }
}
