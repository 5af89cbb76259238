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
use barge::store::{Credential, LocalConfig, OnConflict, S3Config};
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
    /// `--store s3://...`: the bucket instead of the folder.
    pub s3: Option<S3Config>,
    /// `--http`: the HTTP face's address.
    pub http: Option<SocketAddr>,
    /// `--http-cors`: the origin allowed to call it.
    pub http_cors: Option<axum::http::HeaderValue>,
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
    /// The name on the LAN and for LocalSend apps.
    pub name: String,
    /// `--announce`: seconds between announcements, and the discovery port.
    pub announce: Option<(u32, u16)>,
    /// `--localsend`: where, and the PIN if one is required.
    pub localsend: Option<(SocketAddr, Option<String>)>,
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
        let s3 = match &a.store {
            Some(url) => Some(s3_config(&a, url)?),
            None => None,
        };
        let http_cors = match &a.http_cors {
            Some(origin) => {
                let origin = origin.trim_end_matches('/');
                let host = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                // An origin is a scheme and a host (and port): no path.
                let ok = host.is_some_and(|h| !h.is_empty() && !h.contains(['/', ' ']));
                let value = axum::http::HeaderValue::from_str(origin)
                    .ok()
                    .filter(|_| ok);
                Some(value.ok_or_else(|| {
                    UsageError(format!(
                        "--http-cors {origin:?}: expected an origin like https://files.example.org"
                    ))
                })?)
            }
            None => None,
        };
        let name = match &a.name {
            Some(n) => {
                barge_proto::lan::check_name(n).map_err(|e| UsageError(format!("--name: {e}")))?;
                n.clone()
            }
            None => barge::lan::host_name(),
        };
        if a.announce && a.addr.ip().is_loopback() {
            return Err(UsageError(format!(
                "--announce with --addr {}: only this machine can reach a loopback address; \
                 listen on one others reach (e.g. --addr 0.0.0.0:{})",
                a.addr,
                a.addr.port()
            ))
            .into());
        }
        if a.announce_every == 0 {
            return Err(UsageError("--announce-every: at least 1 second".into()).into());
        }
        if let Some(pin) = &a.localsend_pin
            && (pin.is_empty() || pin.len() > 64)
        {
            return Err(UsageError("--localsend-pin: 1 to 64 characters".into()).into());
        }
        Ok(Self {
            name,
            announce: a.announce.then_some((a.announce_every, a.discovery_port)),
            localsend: a.localsend.map(|addr| (addr, a.localsend_pin.clone())),
            addr: a.addr,
            storage,
            s3,
            http: a.http,
            http_cors,
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
    pub async fn dial(&self, addr: &str) -> Result<Tcp> {
        // A server name is looked up on the LAN; the announced TLS fingerprint is not trusted:
        // trust on first use or --fingerprint decide, for the address found.
        let addr = &crate::discover_cmd::resolve(addr, self.name_wait()).await?;
        let mut dial = Tcp::new(addr, self.connect_timeout);
        if let Some(trust) = &self.trust {
            dial.tls = Some(barge::tls::client_config(trust, addr)?);
        }
        dial.bwlimit = self.bwlimit.map(Bucket::new);
        Ok(dial)
    }

    /// How long a server name is looked up on the LAN: the connect timeout, at most 3 s.
    pub fn name_wait(&self) -> Duration {
        self.connect_timeout.min(Duration::from_secs(3))
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

/// `--store s3://BUCKET[/PREFIX]` and the `--s3-*` flags, with the AWS tools' environment.
fn s3_config(a: &ServeArgs, url: &str) -> Result<S3Config> {
    let usage = |m: String| anyhow::Error::new(UsageError(m));
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(usage(format!(
            "--store {url:?}: expected s3://BUCKET or s3://BUCKET/PREFIX"
        )));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(usage(format!("--store {url:?} names no bucket")));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        barge_proto::wire::split_path(prefix).map_err(|e| {
            usage(format!(
                "--store {url:?}: the prefix is not a folder name: {e}"
            ))
        })?;
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let endpoint = a
        .s3_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    if let Some(e) = &endpoint {
        if e.starts_with("http://") && !a.s3_allow_http {
            return Err(usage(format!(
                "--s3-endpoint {e}: plain HTTP sends the keys and the data unencrypted; add \
                 --s3-allow-http to mean it"
            )));
        }
        if !e.starts_with("http://") && !e.starts_with("https://") {
            return Err(usage(format!(
                "--s3-endpoint {e:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
    }
    let credential = match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(key_id), Some(secret_key)) => Credential {
            key_id,
            secret_key,
            token: env("AWS_SESSION_TOKEN"),
        },
        _ => {
            let profile = a
                .s3_profile
                .clone()
                .or_else(|| env("AWS_PROFILE"))
                .unwrap_or_else(|| "default".into());
            let file = env("AWS_SHARED_CREDENTIALS_FILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
                .ok_or_else(|| {
                    usage("no S3 keys: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into())
                })?;
            let text = std::fs::read_to_string(&file).map_err(|e| {
                usage(format!(
                    "no S3 keys: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and {} \
                     cannot be read ({e})",
                    file.display()
                ))
            })?;
            profile_credential(&text, &profile).ok_or_else(|| {
                usage(format!(
                    "{} has no aws_access_key_id and aws_secret_access_key for profile [{profile}]",
                    file.display()
                ))
            })?
        }
    };
    let region = a
        .s3_region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    if a.s3_part_size < 5 << 20 || !a.s3_part_size.is_multiple_of(barge_proto::tree::CHUNK) {
        return Err(usage(format!(
            "--s3-part-size {}: at least 5M and a multiple of 1M",
            a.s3_part_size
        )));
    }
    let mut config = S3Config::new(bucket, credential);
    config.prefix = prefix.to_owned();
    config.endpoint = endpoint;
    config.region = region;
    config.allow_http = a.s3_allow_http;
    config.part_size = a.s3_part_size;
    if !(1..=64).contains(&a.s3_parts_in_flight) {
        return Err(usage(format!(
            "--s3-parts-in-flight {}: from 1 to 64",
            a.s3_parts_in_flight
        )));
    }
    config.parts_in_flight = a.s3_parts_in_flight;
    config.memory = a.s3_memory.clamp(1 << 20, 1 << 34);
    config.partial_ttl = seconds(a.partial_ttl, "--partial-ttl")?;
    Ok(config)
}

/// The keys of `[profile]` in an AWS shared credentials file (INI: `key = value` lines).
fn profile_credential(text: &str, profile: &str) -> Option<Credential> {
    let mut section = String::new();
    let (mut key_id, mut secret_key, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().trim_start_matches("profile ").to_owned();
            continue;
        }
        if section != profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => key_id = Some(v),
                "aws_secret_access_key" => secret_key = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credential {
        key_id: key_id?,
        secret_key: secret_key?,
        token,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn profiles_are_read_from_a_shared_credentials_file() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n\
                    [profile garage]\naws_access_key_id=GK1\naws_secret_access_key=S1\n\
                    aws_session_token = T\n[empty]\n";
        let d = super::profile_credential(text, "default").unwrap();
        assert_eq!(
            (d.key_id.as_str(), d.secret_key.as_str(), d.token),
            ("A", "B", None)
        );
        let g = super::profile_credential(text, "garage").unwrap();
        assert_eq!((g.key_id.as_str(), g.token.as_deref()), ("GK1", Some("T")));
        assert!(super::profile_credential(text, "empty").is_none());
        assert!(super::profile_credential(text, "missing").is_none());
    }
}
