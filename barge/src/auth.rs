//! Who may do what on a barge server: tokens read from a token file, each with its rights and an
//! optional root folder, and the per-address brake on failed attempts.
//!
//! Token file, one token per line (`#` starts a comment):
//! ```text
//! <token> <rights> [root]
//! 9f2c7e1d4b8a6f3e0c5d  all
//! 4e1a9c7b2d6f8e0a3b5c  upload,list  alice
//! ```
//! `rights` is `all` or a comma-separated subset of `upload`, `download`, `list`, `delete`; `root`
//! is a folder below the served folder that the token is confined to (created if missing).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use barge_proto::name::validate_file_name;

/// Shortest token accepted: anything shorter is guessable by the rate-limited brute force this
/// module allows (16 random characters are ~95 bits from base64).
pub const MIN_TOKEN_LEN: usize = 16;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `<token> <rights> [root]`.
    #[error("token file line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The file holds no token: a server would then refuse everyone, which is never meant.
    #[error("token file has no tokens")]
    Empty,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rights {
    /// Put files and create folders (also probe, resume).
    pub upload: bool,
    /// Get files.
    pub download: bool,
    /// List folders.
    pub list: bool,
    /// Remove and rename files and folders.
    pub delete: bool,
}

impl Rights {
    /// Every right.
    pub const ALL: Rights = Rights {
        upload: true,
        download: true,
        list: true,
        delete: true,
    };

    /// Parses `all` or `upload,download,list,delete` (any subset, any order).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == "all" {
            return Ok(Self::ALL);
        }
        let mut r = Rights::default();
        for part in s.split(',') {
            match part {
                "upload" => r.upload = true,
                "download" => r.download = true,
                "list" => r.list = true,
                "delete" => r.delete = true,
                other => {
                    return Err(format!(
                        "unknown right {other:?} (expected all, upload, download, list, delete)"
                    ));
                }
            }
        }
        Ok(r)
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Which token this is, for logs: its line in the token file (the secret is never logged).
    pub label: String,
    /// What it may do.
    pub rights: Rights,
    /// The folder (relative to the served folder, `/`-separated) it is confined to.
    pub root: Option<String>,
}

/// The tokens a server accepts. Only their BLAKE3 hashes are kept in memory.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(blake3::Hash, Grant)>,
}

impl Tokens {
    /// Parses the token file format (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let bad = |message: String| TokenFileError::Line { line, message };
            let mut fields = content.split_whitespace();
            let (Some(token), Some(rights)) = (fields.next(), fields.next()) else {
                return Err(bad("expected `<token> <rights> [root]`".into()));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(bad(format!(
                    "token is shorter than {MIN_TOKEN_LEN} characters"
                )));
            }
            let rights = Rights::parse(rights).map_err(bad)?;
            let root = match fields.next() {
                None => None,
                Some(root) => Some(check_root(root).map_err(bad)?),
            };
            if fields.next().is_some() {
                return Err(bad("too many fields".into()));
            }
            let hash = blake3::hash(token.as_bytes());
            if entries.iter().any(|(h, _)| *h == hash) {
                return Err(bad("the same token appears twice".into()));
            }
            let grant = Grant {
                label: format!("line {line}"),
                rights,
                root,
            };
            entries.push((hash, grant));
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { entries })
    }

    /// The grant of `token`, if it is one of ours. Tokens are compared through their hashes with a
    /// constant-time equality, and every entry is compared, so the time taken says nothing about
    /// how much of a guess was right.
    pub fn check(&self, token: &str) -> Option<&Grant> {
        let hash = blake3::hash(token.as_bytes());
        let mut found = None;
        for (h, grant) in &self.entries {
            // blake3::Hash's `==` is constant-time.
            if *h == hash {
                found = Some(grant);
            }
        }
        found
    }

    /// Every grant, for setting up root folders.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.entries.iter().map(|(_, g)| g)
    }
}

/// A root is one or more safe names joined by `/`: nothing can climb out of the served folder.
fn check_root(root: &str) -> Result<String, String> {
    let trimmed = root.trim_matches('/');
    if trimmed.is_empty() {
        return Err("root folder is empty (omit it to serve the whole folder)".into());
    }
    for part in trimmed.split('/') {
        validate_file_name(part).map_err(|e| format!("root folder {root:?}: {e}"))?;
    }
    Ok(trimmed.to_owned())
}

/// Slows down guessing: after `max_failures` failed attempts from one address within `window`,
/// that address is refused without its token even being checked until the window has passed.
#[derive(Debug)]
pub struct FailureBrake {
    max_failures: u32,
    window: Duration,
    seen: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Addresses remembered at most; older records are dropped first when the table is full, so a
/// spray of addresses cannot grow memory without bound.
const MAX_TRACKED: usize = 65536;

impl FailureBrake {
    /// A brake allowing `max_failures` failures per `window` per address.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self {
            max_failures: max_failures.max(1),
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// How long `ip` must still wait, if it is locked out now.
    pub fn locked_out(&self, ip: IpAddr) -> Option<Duration> {
        self.locked_out_at(ip, Instant::now())
    }

    fn locked_out_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let seen = self.seen.lock().ok()?;
        let (count, since) = seen.get(&ip)?;
        let elapsed = now.saturating_duration_since(*since);
        (*count >= self.max_failures && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now());
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= MAX_TRACKED {
            let window = self.window;
            seen.retain(|_, (_, since)| now.saturating_duration_since(*since) < window);
            if seen.len() >= MAX_TRACKED
                && let Some(oldest) = seen.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k)
            {
                seen.remove(&oldest);
            }
        }
        let entry = seen.entry(ip).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

impl Default for FailureBrake {
    /// Five failures a minute per address.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn parses_rights_and_roots() {
        let t = Tokens::parse(&format!(
            "# team tokens\n{A} all\n\n{B} upload,list  alice/in  # Alice\n"
        ))
        .unwrap();
        let a = t.check(A).unwrap();
        assert_eq!(a.rights, Rights::ALL);
        assert_eq!(a.root, None);
        let b = t.check(B).unwrap();
        assert_eq!(
            b.rights,
            Rights {
                upload: true,
                download: false,
                list: true,
                delete: false,
            }
        );
        assert_eq!(b.root.as_deref(), Some("alice/in"));
        assert_eq!(b.label, "line 4");
        assert!(t.check("aaaaaaaaaaaaaaaaaaab").is_none());
        assert!(t.check("").is_none());
    }

    #[test]
    fn refuses_bad_files() {
        let err = |text: &str| Tokens::parse(text).unwrap_err().to_string();
        assert!(err("short all").contains("shorter"));
        assert!(err(A).contains("expected"));
        assert!(err(&format!("{A} root")).contains("unknown right"));
        assert!(err(&format!("{A} all ../etc")).contains("root folder"));
        assert!(err(&format!("{A} all a/../b")).contains("root folder"));
        assert!(err(&format!("{A} all x y")).contains("too many"));
        assert!(err(&format!("{A} all\n{A} list")).contains("twice"));
        assert!(err("# nothing\n").contains("no tokens"));
    }

    #[test]
    fn brake_locks_out_after_failures_then_forgets() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let window = Duration::from_secs(60);
        let brake = FailureBrake::new(3, window);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(brake.locked_out_at(ip, t0).is_none());
            brake.failed_at(ip, t0);
        }
        assert_eq!(brake.locked_out_at(ip, t0), Some(window));
        assert!(brake.locked_out_at(other, t0).is_none());
        assert!(brake.locked_out_at(ip, t0 + window).is_none());
        // A failure after the window starts a new count.
        brake.failed_at(ip, t0 + window);
        assert!(brake.locked_out_at(ip, t0 + window).is_none());
    }
}
