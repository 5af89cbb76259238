//! Validated configuration: a command's arguments checked once, here, into the values the library
//! takes (ripgrep's low-level args -> high-level config). A value clap accepted but that cannot be
//! right is a [`UsageError`], which exits 2 like clap's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use barge::auth::Tokens;
use barge::server::ServerConfig;
use barge::service::files::lesson_format_by_default;
use barge::store::{LocalConfig, OnConflict};
use barge::transfer::Policy;

use barge::client::v1::{Filter, OnExisting, Options, Tcp};
use barge::throttle::Bucket;
use barge::tls::{Fingerprint, Trust};

use crate::args::{Conflict, ConnArgs, Existing, FrameworkArgs, ServeArgs, TransferArgs};

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
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| {
                    barge::auth::TokenFileError::Read {
                        path: path.display().to_string(),
                        source,
                    }
                })?;
                Some(Tokens::parse(&text)?)
            }
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
            allow_delete: a.allow_delete,
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

/// Everything the client commands take from the shared client flags, checked once.
#[derive(Debug)]
pub struct ClientConfig {
    /// `--connect-timeout`.
    pub connect_timeout: Duration,
    /// `--timeout`.
    pub io_timeout: Duration,
    /// The first line of `--token-file`, else `$BARGE_TOKEN` (never a flag: command lines are
    /// visible to every user of the machine).
    pub token: Option<String>,
    /// How to trust the server's certificate; `None` for plain TCP.
    pub trust: Option<Trust>,
    /// `--bwlimit`, bytes per second.
    pub bwlimit: Option<u64>,
}

impl ClientConfig {
    /// The connection flags checked, with the transfer commands' `--bwlimit`.
    pub fn new(c: &ConnArgs, bwlimit: Option<u64>) -> Result<Self> {
        let trust = if let Some(fp) = &c.fingerprint {
            let fp =
                Fingerprint::parse(fp).map_err(|e| UsageError(format!("--fingerprint: {e}")))?;
            Some(Trust::Pinned(fp))
        } else if let Some(ca) = &c.ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            Some(Trust::Ca(barge::tls::certs_from_pem(
                &pem,
                &ca.display().to_string(),
            )?))
        } else if c.tls {
            Some(Trust::KnownHosts {
                file: c
                    .known_hosts
                    .clone()
                    .unwrap_or_else(barge::client::known_hosts::default_file),
            })
        } else {
            None
        };
        Ok(Self {
            connect_timeout: seconds(c.connect_timeout, "--connect-timeout")?,
            io_timeout: seconds(c.timeout, "--timeout")?,
            token: token(c)?,
            trust,
            bwlimit,
        })
    }

    /// The v1 client's options; `t` (retries) only for the commands that resume.
    pub fn options(&self, t: Option<&TransferArgs>) -> Result<Options, UsageError> {
        let defaults = Options::default();
        let filter = match t {
            Some(t) => Filter::new(&t.include, &t.exclude)
                .map_err(|e| UsageError(format!("--include/--exclude: {e}")))?,
            None => Filter::default(),
        };
        Ok(Options {
            filter,
            dry_run: t.is_some_and(|t| t.dry_run),
            connect_timeout: self.connect_timeout,
            io_timeout: self.io_timeout,
            retries: t.map_or(defaults.retries, |t| t.retries),
            checksum: t.is_some_and(|t| t.checksum),
            on_existing: match t.map(|t| t.on_conflict) {
                None | Some(Existing::Update) => OnExisting::Update,
                Some(Existing::Skip) => OnExisting::Skip,
                Some(Existing::Rename) => OnExisting::Rename,
                Some(Existing::Overwrite) => OnExisting::Overwrite,
                Some(Existing::Fail) => OnExisting::Fail,
            },
            token: self.token.clone(),
            writers: crate::writers().clone(),
            ..defaults
        })
    }

    /// A dialer for `addr`: TLS when asked for, paced by `--bwlimit`.
    pub fn dial(&self, addr: &str) -> Result<Tcp> {
        let mut dial = Tcp::new(addr, self.connect_timeout);
        if let Some(trust) = &self.trust {
            dial.tls = Some(barge::tls::client_config(trust, addr)?);
        }
        dial.bwlimit = self.bwlimit.map(Bucket::new);
        Ok(dial)
    }

    /// The lesson's format has no TLS, tokens or pacing: asking for them with it is a mistake.
    pub fn lesson_only(&self) -> Result<(), UsageError> {
        if self.trust.is_some() || self.token.is_some() {
            return Err(UsageError(
                "the lesson's format (--legacy) has no TLS and no tokens: drop --legacy to use them"
                    .into(),
            ));
        }
        if self.bwlimit.is_some() {
            return Err(UsageError(
                "--bwlimit works with barge's protocol, not with --legacy".into(),
            ));
        }
        Ok(())
    }
}

/// The token: the first line of --token-file, else $BARGE_TOKEN.
fn token(c: &ConnArgs) -> Result<Option<String>> {
    if let Some(path) = &c.token_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?;
        let first = text.lines().next().unwrap_or("").trim();
        if first.is_empty() {
            anyhow::bail!("token file {} is empty", path.display());
        }
        return Ok(Some(first.to_owned()));
    }
    Ok(std::env::var("BARGE_TOKEN")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}
