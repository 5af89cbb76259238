//! The client's known-hosts file (trust on first use): `host:port SHA256:...` per line. The first
//! certificate seen for a host is recorded; a different one later is refused loudly.

use std::io::Write;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::tls::Fingerprint;

/// The default known-hosts file: `$BARGE_KNOWN_HOSTS`, else `$XDG_CONFIG_HOME/barge/known_hosts`,
/// else `~/.config/barge/known_hosts`.
pub fn default_file() -> PathBuf {
    if let Some(p) = std::env::var_os("BARGE_KNOWN_HOSTS") {
        return p.into();
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("barge").join("known_hosts")
}

/// Checks `seen` against the known-hosts entry of `host`, recording it when there is none.
pub fn check(file: &Path, host: &str, seen: Fingerprint) -> Result<(), rustls::Error> {
    let io_err = |e: std::io::Error| {
        rustls::Error::General(format!("known-hosts file {}: {e}", file.display()))
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(e)),
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some(host) {
            continue;
        }
        let recorded = fields.next().and_then(|f| Fingerprint::parse(f).ok());
        return match recorded {
            Some(fp) if fp == seen => Ok(()),
            Some(fp) => Err(rustls::Error::General(format!(
                "WARNING: THE CERTIFICATE OF {host} HAS CHANGED: it is now {seen}, but {} records \
                 {fp}. Someone may be intercepting the connection; if the server's certificate \
                 was really replaced, remove its line from that file",
                file.display()
            ))),
            None => Err(rustls::Error::General(format!(
                "known-hosts file {} has a bad line for {host}",
                file.display()
            ))),
        };
    }
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(io_err)?;
    writeln!(out, "{host} {seen}").map_err(io_err)?;
    warn!(host, fingerprint = %seen, file = %file.display(), "first connection to this server: its certificate is now trusted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_records_then_refuses_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        let a = Fingerprint::of(b"a");
        let b = Fingerprint::of(b"b");
        check(&file, "h:1", a).unwrap();
        check(&file, "h:1", a).unwrap();
        check(&file, "other:1", b).unwrap();
        let err = check(&file, "h:1", b).unwrap_err().to_string();
        assert!(err.contains("HAS CHANGED"), "{err}");
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), 2);
    }
}
