//! The transfer core: what every front end (the lesson's format, barge v1, HTTP next) shares, so
//! that a front end only decodes and encodes. It owns
//! - **admission** ([`Core::session`], [`Session`]): tokens, rights and roots, the name rule, the
//!   size limit, the conflict policy's early refusal, the resume-offset rule; the store adds its
//!   own accounting (quota, free space, the partial's lock) in [`Store::begin`];
//! - **verification** ([`verify::Verifier`], used by [`Receiver`]): BLAKE3 chunk CVs checked
//!   when the sender declares them, computed when it does not, and the whole digest;
//! - **publish** under the conflict policy ([`Receiver::finish`], [`Session::store_small`]);
//! - **reading** for downloads, chunk by chunk with each chunk's CV ([`Outgoing`]).
//!
//! Adding a front end needs none of the store's or the policy's code: decode a request, call a
//! [`Session`] method, encode its answer.

mod receive;
mod send;
pub mod stripe;
pub mod verify;

pub use receive::Receiver;
pub use send::{Chunk, Outgoing};
pub use verify::Mode;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use barge_proto::name::NameError;
use barge_proto::tree::{CHUNK, Cv, chunk_cv, hex, prefix_digest};
use barge_proto::wire::split_path;
use bytes::Bytes;
use tracing::{info, warn};

use crate::auth::{FailureBrake, Rights, Tokens};
use crate::store::{Begin, Listing, Meta, OnConflict, Store, StoreError, Stored, Version};

/// The server's rules for what it accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// What a name already taken means.
    pub on_conflict: OnConflict,
    /// Largest file accepted, checked against the declared size before any byte is written.
    pub max_file_size: Option<u64>,
    /// Whether files may be listed and downloaded at all.
    pub no_downloads: bool,
    /// Whether anyone may remove and rename on a server without tokens (with tokens, the
    /// `delete` right decides).
    pub allow_delete: bool,
}

/// The tokens a server requires, the store of each token's root, and the brake on guessing.
#[derive(Debug)]
pub struct Access {
    /// Accepted tokens.
    pub tokens: Tokens,
    /// The scoped store of each root folder named in the tokens.
    pub roots: HashMap<String, Arc<dyn Store>>,
    /// Failed attempts per address.
    pub brake: FailureBrake,
}

/// The core of one server: its store, policy and tokens. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Core {
    store: Arc<dyn Store>,
    policy: Arc<Policy>,
    access: Option<Arc<Access>>,
}

/// What a session may do, to check before doing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Put files, create folders, probe for a resume.
    Upload,
    /// Get a file.
    Download,
    /// List something: a folder needs the list right, one file the download right (checked
    /// again by [`Session::list`] once the path is known).
    List,
    /// Remove or rename stored files and folders.
    Delete,
}

/// Why a session may not do something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token yet, and the server requires one.
    #[error("this server requires a token (set BARGE_TOKEN or use --token-file)")]
    NoToken,
    /// The token is wrong.
    #[error("wrong token")]
    WrongToken,
    /// Too many wrong tokens from this address.
    #[error("too many failed attempts from {addr}: try again in {secs} s")]
    LockedOut {
        /// The address.
        addr: std::net::IpAddr,
        /// Seconds left.
        secs: u64,
    },
    /// The token lacks the right.
    #[error("{0} is not allowed with this token")]
    Forbidden(&'static str),
    /// The server does not offer it.
    #[error("{0} disabled on this server")]
    Disabled(&'static str),
}

impl Core {
    /// A core over `store` with `policy` and no tokens.
    pub fn new(store: Arc<dyn Store>, policy: Policy) -> Self {
        Self {
            store,
            policy: Arc::new(policy),
            access: None,
        }
    }

    /// Requires one of `tokens` on every session; rights and roots follow the token. Root folders
    /// are created now.
    pub fn with_tokens(mut self, tokens: Tokens, brake: FailureBrake) -> Result<Self, StoreError> {
        let mut roots = HashMap::new();
        for root in tokens.grants().filter_map(|g| g.root.clone()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = roots.entry(root) {
                let scoped = self.store.scoped(slot.key())?;
                slot.insert(scoped);
            }
        }
        self.access = Some(Arc::new(Access {
            tokens,
            roots,
            brake,
        }));
        Ok(self)
    }

    /// Allows or forbids listing and downloading.
    pub fn with_downloads(mut self, allowed: bool) -> Self {
        let mut policy = (*self.policy).clone();
        policy.no_downloads = !allowed;
        self.policy = Arc::new(policy);
        self
    }

    /// The whole store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The tokens, when the server requires them.
    pub fn access(&self) -> Option<&Access> {
        self.access.as_deref()
    }

    /// A session with every right on the whole store, tokens or not: for a front end whose
    /// protocol cannot carry a token (the lesson's format), which the operator turned on.
    pub fn unauthenticated(&self, peer: SocketAddr) -> Session {
        Session {
            core: self.clone(),
            store: self.store.clone(),
            rights: Some(Rights::ALL),
            root: None,
            peer,
        }
    }

    /// A new session for a peer: every right when the server has no tokens, none until
    /// [`Session::authenticate`] otherwise.
    pub fn session(&self, peer: SocketAddr) -> Session {
        Session {
            core: self.clone(),
            store: self.store.clone(),
            rights: self.access.is_none().then_some(Rights::ALL),
            root: None,
            peer,
        }
    }
}

/// One peer's view of the core: its rights and root. Front ends hold one per connection (or per
/// request, for stateless protocols).
#[derive(Debug, Clone)]
pub struct Session {
    core: Core,
    store: Arc<dyn Store>,
    rights: Option<Rights>,
    /// The token's root folder, if it has one.
    root: Option<String>,
    peer: SocketAddr,
}

/// An upload to admit (see [`Session::receive`]).
#[derive(Debug, Clone)]
pub struct Put<'a> {
    /// Where it goes.
    pub path: &'a str,
    /// Its declared size.
    pub size: u64,
    /// Continue from here: 0, or what a probe reported kept.
    pub from: u64,
    /// Whether the sender declares each chunk's CV (v1) or the core computes them.
    pub mode: Mode,
    /// Whether the protocol can come back for it (the lesson's cannot).
    pub resumable: bool,
    /// An update: the digest of the stored version it replaces (see [`Session::replacing`]).
    pub replaces: Option<Cv>,
    /// With `replaces`: one flag per chunk, set for the chunks taken from the version replaced
    /// instead of received (the sender checked that theirs are the same).
    pub reuse: Option<Vec<bool>>,
    /// The sender's modification time, for the stored file.
    pub mtime: Option<i64>,
    /// Which partial it continues: [`Version::Any`] (one per path and size), or an upload's own
    /// ([`Version::Upload`], for protocols whose uploads have ids, like tus).
    pub version: Version,
}

impl<'a> Put<'a> {
    /// A fresh upload of `path` (`size` bytes) whose CVs the core computes, resumable, no update.
    pub fn new(path: &'a str, size: u64) -> Self {
        Self {
            path,
            size,
            from: 0,
            mode: Mode::Compute,
            resumable: true,
            replaces: None,
            reuse: None,
            mtime: None,
            version: Version::Any,
        }
    }
}

/// What the store already has of a file a client is about to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Verified bytes kept by an interrupted upload (a chunk boundary, or the size).
    pub offset: u64,
    /// Digest of the kept chunks' CVs, for the client to compare with its own.
    pub prefix: Cv,
    /// The digest of a file already stored at that path with that size (a client that lost the
    /// reply to its upload learns that it did complete).
    pub stored: Option<Cv>,
}

impl Session {
    /// The store this session works in (its token's root, or the whole store).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The root folder of the session's token (`None`: the whole store).
    pub fn root(&self) -> Option<&str> {
        self.root.as_deref()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The session's rights, `None` before a required token.
    pub fn rights(&self) -> Option<Rights> {
        self.rights
    }

    /// The policy of the core.
    pub fn policy(&self) -> &Policy {
        &self.core.policy
    }

    /// Checks a token. A second call replaces the first entirely: its rights and its root (no
    /// root: the whole store), never a mix of the two tokens. Failures are logged and counted
    /// against the address.
    pub fn authenticate(&mut self, token: &str) -> Result<(), Denied> {
        let Some(access) = self.core.access() else {
            self.rights = Some(Rights::ALL);
            return Ok(()); // no tokens needed: any token is fine
        };
        let peer = self.peer;
        if let Some(wait) = access.brake.locked_out(peer.ip()) {
            warn!(%peer, "authentication refused: too many failed attempts from this address");
            return Err(Denied::LockedOut {
                addr: peer.ip(),
                secs: wait.as_secs().max(1),
            });
        }
        match access.tokens.check(token) {
            Some(grant) => {
                info!(token = %grant.label, root = ?grant.root, "authenticated");
                let root = grant
                    .root
                    .as_ref()
                    .and_then(|r| access.roots.get(r).cloned());
                self.store = root.unwrap_or_else(|| self.core.store.clone());
                self.rights = Some(grant.rights);
                self.root = grant.root.clone();
                Ok(())
            }
            None => {
                access.brake.failed(peer.ip());
                warn!(%peer, "authentication failed: wrong token");
                Err(Denied::WrongToken)
            }
        }
    }

    /// Whether the session may do `action` (before its path is known).
    pub fn check(&self, action: Action) -> Result<(), Denied> {
        let Some(rights) = self.rights else {
            return Err(Denied::NoToken);
        };
        let (allowed, what) = match action {
            Action::Upload => (rights.upload, "uploading"),
            Action::List if self.core.policy.no_downloads => {
                return Err(Denied::Disabled("listing is"));
            }
            Action::Download if self.core.policy.no_downloads => {
                return Err(Denied::Disabled("downloads are"));
            }
            // A token that may download may list a single file (what `get` asks first).
            Action::List => (rights.list || rights.download, "listing"),
            Action::Download => (rights.download, "downloading"),
            Action::Delete if self.core.access.is_none() && !self.core.policy.allow_delete => {
                return Err(Denied::Disabled("removing and renaming are"));
            }
            Action::Delete => (rights.delete, "removing and renaming"),
        };
        if allowed {
            Ok(())
        } else {
            Err(Denied::Forbidden(what))
        }
    }

    /// What is kept of an interrupted upload of `path` (`size` bytes), and whether the file is
    /// already stored.
    pub async fn probe(&self, path: &str, size: u64) -> Result<Probe, StoreError> {
        let kept = self.store.kept(path, size, Version::Any).await?;
        let stored = match self.store.stat(path).await {
            Ok(Some(meta)) if meta.size == size => Some(meta.digest),
            _ => None,
        };
        Ok(Probe {
            offset: (kept.len() as u64 * CHUNK).min(size),
            prefix: prefix_digest(&kept),
            stored,
        })
    }

    /// Admits an upload and starts receiving it (see [`Put`]).
    pub async fn receive(&self, put: Put<'_>) -> Result<Receiver, StoreError> {
        let on_conflict = self.replacing(put.path, put.replaces).await?;
        let reuse = match (put.reuse, put.replaces) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(StoreError::BadRequest("reuse needs replaces".into()));
            }
            (Some(_), Some(_)) if put.mode != Mode::Check => {
                return Err(StoreError::BadRequest(
                    "reuse needs declared chunk CVs".into(),
                ));
            }
            (Some(wanted), Some(version)) => {
                if wanted.len() as u64 != barge_proto::tree::chunk_count(put.size) {
                    return Err(StoreError::BadRequest(
                        "reuse names chunks of another size".into(),
                    ));
                }
                // The version replaced is the source: opened now, so it is that version.
                let source =
                    self.send(put.path, 0, Some(&hex(&version)))
                        .await
                        .map_err(|e| match e {
                            SendError::Store(e) => e,
                            SendError::Changed(_) => StoreError::Conflict(format!(
                                "{} (it changed since it was listed)",
                                put.path
                            )),
                        })?;
                Some(receive::Reuse::new(source, wanted))
            }
        };
        let begin = Begin {
            from: put.from,
            owner: self.peer.ip().to_string(),
            resumable: put.resumable,
            on_conflict,
            mtime: put.mtime,
            version: put.version,
            ..Begin::new(put.path, put.size)
        };
        let policy = Policy {
            on_conflict,
            ..self.core.policy.as_ref().clone()
        };
        let mut receiver = receive(self.store.as_ref(), &policy, begin, put.mode).await?;
        receiver.reuse = reuse;
        Ok(receiver)
    }

    /// The CVs of every chunk of the file stored at `path`, with its facts: what a client compares
    /// with its own version to send only the chunks that differ. Read and hashed now.
    pub async fn chunk_cvs(&self, path: &str) -> Result<(Meta, Vec<Cv>), StoreError> {
        let mut outgoing = self.send(path, 0, None).await.map_err(|e| match e {
            SendError::Store(e) => e,
            SendError::Changed(_) => StoreError::BadRequest("no version was asked for".into()),
        })?;
        let mut cvs = Vec::new();
        while let Some(chunk) = outgoing.next().await {
            cvs.push(chunk?.cv);
        }
        Ok((outgoing.meta, cvs))
    }

    /// The conflict policy for an upload of `path`: the server's, or, for an update of the
    /// version whose digest is `replaces`, overwrite — if that version is still the one stored
    /// and the server ever replaces files (not under `OnConflict::Fail`). Two updates of one
    /// version at once both pass this check; the last to finish wins, as with any overwrite.
    pub async fn replacing(
        &self,
        path: &str,
        replaces: Option<Cv>,
    ) -> Result<OnConflict, StoreError> {
        let Some(expected) = replaces else {
            return Ok(self.core.policy.on_conflict);
        };
        if self.core.policy.on_conflict == OnConflict::Fail {
            return Err(StoreError::Conflict(format!(
                "{path} (this server never replaces files)"
            )));
        }
        match self.store.stat(path).await? {
            Some(meta) if meta.digest == expected => Ok(OnConflict::Overwrite),
            Some(_) => Err(StoreError::Conflict(format!(
                "{path} (it changed since it was listed)"
            ))),
            None => Err(StoreError::Conflict(format!(
                "{path} (not stored: nothing to replace)"
            ))),
        }
    }

    /// Stores a small file (at most one chunk) received whole: checks its chunk's CV (`None` for
    /// an empty file) when the sender declared one, and its digest, then publishes it (replacing
    /// the version `replaces` names, as [`Session::receive`] does).
    pub async fn store_small(
        &self,
        path: &str,
        data: Bytes,
        cv: Option<Cv>,
        digest: Cv,
        replaces: Option<Cv>,
        mtime: Option<i64>,
    ) -> Result<Stored, StoreError> {
        let size = data.len() as u64;
        admit(&self.core.policy, path, size, 0)?;
        if size > CHUNK {
            return Err(StoreError::BadRequest(
                "a file received whole is at most one chunk".into(),
            ));
        }
        // Hashed here, not on a blocking thread: at most a chunk (~0.25 ms), usually a few KiB,
        // and a second hand-off per small file cost 7 % on 10,000 of them.
        let chunk_ok = match cv {
            Some(cv) => size > 0 && chunk_cv(0, &data) == cv,
            None => size == 0,
        };
        if !chunk_ok {
            return Err(StoreError::Integrity(
                "chunk 0 does not match its digest".into(),
            ));
        }
        if *blake3::hash(&data).as_bytes() != digest {
            return Err(StoreError::Integrity(
                "the file's digest does not match the sender's".into(),
            ));
        }
        let on_conflict = self.replacing(path, replaces).await?;
        self.store
            .put_small(path, data, digest, on_conflict, mtime)
            .await
    }

    /// Creates a folder.
    pub async fn mkdir(&self, path: &str) -> Result<(), StoreError> {
        self.store.mkdir(path).await
    }

    /// Removes a file or folder (see [`Store::remove`]); returns the bytes freed.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<u64, StoreError> {
        let freed = self.store.remove(path, recursive).await?;
        info!(path, recursive, freed, "removed");
        Ok(freed)
    }

    /// Renames a file or folder, never replacing anything (see [`Store::rename`]).
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), StoreError> {
        self.store.rename(from, to).await?;
        info!(from, to, "renamed");
        Ok(())
    }

    /// Lists `path`. A session with the download right but not the list right may list one file
    /// (`Err(Denied)` for a folder).
    pub async fn list(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<Result<Listing, StoreError>, Denied> {
        let may_list_folders = self.rights.is_some_and(|r| r.list);
        if !may_list_folders && !matches!(self.store.stat(path).await, Ok(Some(_))) {
            return Err(Denied::Forbidden("listing folders (it may download files)"));
        }
        Ok(self.store.list(path, recursive).await)
    }

    /// Opens `path` for sending from byte `from` (0, a chunk boundary, or the size). With
    /// `if_digest` (hex), only if the file still has that digest: a client resuming a download
    /// must not mix chunks of two versions.
    pub async fn send(
        &self,
        path: &str,
        from: u64,
        if_digest: Option<&str>,
    ) -> Result<Outgoing, SendError> {
        let reading = self.store.read(path, from).await?;
        let meta = reading.meta;
        if let Some(wanted) = if_digest
            && !wanted.eq_ignore_ascii_case(&hex(&meta.digest))
        {
            return Err(SendError::Changed(meta));
        }
        if from > meta.size || (!from.is_multiple_of(CHUNK) && from != meta.size) {
            return Err(StoreError::BadRequest(format!("cannot start at byte {from}")).into());
        }
        Ok(Outgoing::new(reading, from))
    }

    /// The core's rules for a file about to be received (a path of safe names, the size limit,
    /// the resume-offset rule), for a front end that wants to refuse before the body arrives.
    pub fn admit(&self, path: &str, size: u64, from: u64) -> Result<(), StoreError> {
        admit(&self.core.policy, path, size, from)
    }
}

/// Why a file is not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The store refused (not found, bad offset, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file no longer has the digest the client asked for.
    #[error("the file changed: its digest differs")]
    Changed(Meta),
}

/// The rules every write passes before the store is asked: a path of safe names, the size limit,
/// the resume-offset rule.
fn admit(policy: &Policy, path: &str, size: u64, from: u64) -> Result<(), StoreError> {
    if split_path(path)?.is_empty() {
        return Err(NameError::Empty.into());
    }
    if let Some(max) = policy.max_file_size
        && size > max
    {
        return Err(StoreError::TooLarge { size, max });
    }
    if from > size || (!from.is_multiple_of(CHUNK) && from != size) {
        return Err(StoreError::BadRequest(format!(
            "cannot start at byte {from}"
        )));
    }
    Ok(())
}

/// Admits `begin` into `store` and starts receiving: the core's entry for any writer, servers'
/// sessions and a client's download alike.
pub async fn receive(
    store: &dyn Store,
    policy: &Policy,
    begin: Begin,
    mode: Mode,
) -> Result<Receiver, StoreError> {
    admit(policy, &begin.path, begin.size, begin.from)?;
    if begin.on_conflict == OnConflict::Fail && store.exists(&begin.path).await? {
        // Early refusal saves receiving the body; publish re-checks without races.
        return Err(StoreError::Conflict(begin.path));
    }
    let (path, size, from) = (begin.path.clone(), begin.size, begin.from);
    let (partial, kept) = store.begin(begin).await?;
    Ok(Receiver::new(
        partial,
        mode,
        path,
        size,
        from,
        kept,
        policy.on_conflict,
    ))
}

/// What a store keeps of a transfer of `path` (`size` bytes, `version`): the offset to continue
/// from and the digest of the kept CVs.
pub async fn kept(
    store: &dyn Store,
    path: &str,
    size: u64,
    version: Version,
) -> Result<(u64, Vec<Cv>), StoreError> {
    let cvs = store.kept(path, size, version).await?;
    Ok(((cvs.len() as u64 * CHUNK).min(size), cvs))
}

#[cfg(test)]
mod tests;
