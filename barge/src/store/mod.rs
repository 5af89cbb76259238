//! The `Store` trait: everything the transfer core needs from where files are kept, and nothing
//! about how. Two backends live here, the local folder ([`local`]) and memory ([`memory`]); an
//! object store with multipart uploads fits the same shape (see below).
//!
//! What a store owns, whatever its medium:
//! - **Atomic publish**: a file appears under its name only complete, and with
//!   [`OnConflict::Rename`]/[`OnConflict::Fail`] two publishes of one name never overwrite each
//!   other (the local store's `RENAME_NOREPLACE`; an object store's conditional put).
//! - **Resume state**: for each partial, the verified chunks' CVs and the bytes they cover, kept
//!   in the store itself (so another process, or another server on the same bucket, can continue)
//!   and never claiming bytes the medium does not durably hold.
//! - **One writer per partial**, across processes; a second fresh upload of the same name gets a
//!   partial of its own.
//! - **Accounting**: quota, free space, per-client caps and expiry of abandoned partials, because
//!   only the store knows what it holds.
//!
//! What it does not own: names from peers are checked by the core before they get here (a store
//! checks them again, cheaply, as defence in depth), and bytes are *verified by the core*: a
//! partial is told which bytes to write and, separately, that a chunk is verified. Bytes of a
//! chunk that was never confirmed are never counted and are cut away on resume.
//!
//! Why a partial takes ordered writes, not positioned ones: an object store has no positioned
//! writes (it uploads parts of ≥ 5 MiB), and every protocol barge speaks sends a file's chunks in
//! order anyway. Why reads are streams of whole chunks: the core hashes each chunk it sends.
//!
//! The trait is object-safe (`Arc<dyn Store>`): a server picks its backend at run time, and a
//! token's root is a scoped view ([`Store::scoped`]) of the same store.

pub mod local;
pub mod memory;
pub mod s3;

#[cfg(test)]
mod contract;

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use barge_proto::name::NameError;
use barge_proto::tree::Cv;
use barge_proto::wire::Entry;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use local::{LocalConfig, LocalStore, Quota, Reservation, STATE_DIR, Writers, bytes_stored};
pub use memory::MemoryStore;
pub use s3::{Credential, S3Config, S3Store};

/// A boxed, sendable future: what the trait's async methods return (object safety).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What to do when a file with the received name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Keep both: store as `name (1).ext`, `name (2).ext`, ...
    #[default]
    Rename,
    /// Replace the existing file (atomically; a symlink is replaced, not followed).
    Overwrite,
    /// Refuse the upload.
    Fail,
}

/// Which content a partial belongs to, besides its path and size: an upload's partial holds
/// whatever the sender sends; a download's holds one version of a file, named by its digest, so
/// that chunks of two versions are never mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Any content (uploads: the sender is the authority).
    Any,
    /// The content with this digest (downloads).
    Digest(Cv),
    /// One upload of its own, named by the front end (a tus upload id's hash): two uploads of
    /// the same name and size never share a partial.
    Upload(Cv),
}

/// A request to start (or continue) writing a file.
#[derive(Debug, Clone)]
pub struct Begin {
    /// Where the file will be published (safe names joined by `/`).
    pub path: String,
    /// Its declared size.
    pub size: u64,
    /// Which content it is.
    pub version: Version,
    /// Continue from here: 0, or exactly the bytes the store reported kept.
    pub from: u64,
    /// Whose partial this is (an address or a token), for the per-client cap; empty for none.
    pub owner: String,
    /// Whether another connection may continue it later. A transfer whose protocol cannot resume
    /// (the lesson's format) is not kept when interrupted.
    pub resumable: bool,
    /// With [`OnConflict::Fail`], refuse at once if the name is taken (saves the body).
    pub on_conflict: OnConflict,
    /// The modification time to give the published file (seconds since the epoch), as the
    /// sender had it; `None` for the time of publishing.
    pub mtime: Option<i64>,
}

impl Begin {
    /// A fresh, resumable upload of `path` (`size` bytes) of any content, from nobody in
    /// particular, renamed on a conflict: change the fields that differ.
    pub fn new(path: impl Into<String>, size: u64) -> Self {
        Self {
            path: path.into(),
            size,
            version: Version::Any,
            from: 0,
            owner: String::new(),
            resumable: true,
            on_conflict: OnConflict::Rename,
            mtime: None,
        }
    }
}

/// A file published under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The final name (differs from the requested one after a conflict rename).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3 digest.
    pub digest: Option<Cv>,
}

/// A stored file's facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// BLAKE3 digest of the whole file.
    pub digest: Cv,
}

/// A file being read: its facts and its bytes, one chunk (the last may be shorter) per item,
/// starting at the chunk that holds the requested offset.
#[derive(Debug)]
pub struct Reading {
    /// The file's facts, taken when it was opened.
    pub meta: Meta,
    /// Its chunks. A file that shrinks while being read ends the stream with an error.
    pub chunks: mpsc::Receiver<io::Result<Bytes>>,
}

/// A begun partial and the CVs of the chunks it already holds (see [`Store::begin`]).
pub type Begun = (Box<dyn Partial>, Vec<Cv>);

/// A listing: entries relative to the listed folder, sorted by path.
pub type Listing = Vec<Entry>;

/// Where files are kept. See the module documentation for what an implementation owns.
pub trait Store: Send + Sync + Debug {
    /// A view of the folder `rel` below this one, created if missing, with the same rules and
    /// shared state (partials, quota, sweep): a token's root.
    fn scoped(&self, rel: &str) -> Result<Arc<dyn Store>, StoreError>;

    /// The CVs of the verified chunks kept for this transfer (empty if none). A transfer of it
    /// still running is waited for briefly (usually the same client's previous connection, saving
    /// its resume point); if it goes on, nothing is reported kept.
    fn kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<Vec<Cv>, StoreError>>;

    /// Starts (or continues, when `from > 0`) writing a file. Checks the quota, free space and
    /// the partial's lock; returns the partial and the CVs of the chunks it already holds.
    fn begin(&self, begin: Begin) -> BoxFuture<'_, Result<Begun, StoreError>>;

    /// Stores a small file (at most one chunk) received whole and already verified, in one step.
    fn put_small(
        &self,
        path: &str,
        data: Bytes,
        digest: Cv,
        on_conflict: OnConflict,
        mtime: Option<i64>,
    ) -> BoxFuture<'_, Result<Stored, StoreError>>;

    /// The facts of the file at `path`; `None` if there is none (or it is a folder).
    fn stat(&self, path: &str) -> BoxFuture<'_, Result<Option<Meta>, StoreError>>;

    /// Whether anything (file, folder, link) already has this name.
    fn exists(&self, path: &str) -> BoxFuture<'_, Result<bool, StoreError>>;

    /// Creates a folder (and missing parents).
    fn mkdir(&self, path: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Removes the file or empty folder at `path`; a folder with everything below it when
    /// `recursive`. Returns the bytes of the files removed.
    fn remove(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Renames a file or folder; `to`'s missing parents are created and nothing is ever replaced
    /// ([`StoreError::Conflict`] if `to` exists).
    fn rename(&self, from: &str, to: &str) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Lists a folder (or one file), optionally everything below it; never the store's own state.
    fn list(&self, path: &str, recursive: bool) -> BoxFuture<'_, Result<Listing, StoreError>>;

    /// Reads the file at `path` from the chunk holding byte `from`.
    fn read(&self, path: &str, from: u64) -> BoxFuture<'_, Result<Reading, StoreError>>;

    /// Removes partials abandoned for longer than the store's expiry; returns how many.
    fn expire(&self) -> BoxFuture<'_, Result<usize, StoreError>>;

    /// Whether [`Store::read_kept`] works here (a bucket cannot read an unfinished multipart
    /// upload back).
    fn reads_kept(&self) -> bool {
        true
    }

    /// The bytes of an upload kept whole but not published (every chunk verified, nothing
    /// published): for a front end that assembles one file from uploads of its pieces (tus
    /// concatenation, or a length learned late). The partial stays until discarded. Only files
    /// of more than one chunk are ever kept (a one-chunk file has nothing to resume from).
    /// [`StoreError::Unsupported`] where the store cannot read an unfinished upload back.
    fn read_kept(
        &self,
        path: &str,
        size: u64,
        version: Version,
    ) -> BoxFuture<'_, Result<mpsc::Receiver<io::Result<Bytes>>, StoreError>>;

    /// Keeps a front end's small state under `name` (`[a-z0-9-]`, at most 64 bytes) in the
    /// store's own state, shared by every view and every server on the store: e.g. a tus
    /// upload's description, so it survives a restart and is found by another server.
    fn put_note(&self, name: &str, value: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;

    /// A note, if there is one.
    fn get_note(&self, name: &str) -> BoxFuture<'_, Result<Option<Bytes>, StoreError>>;

    /// Removes a note (no error if there is none).
    fn delete_note(&self, name: &str) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Checks a note's name: short, lower-case letters, digits and `-` (never a path).
pub fn check_note_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadRequest(format!(
            "{name:?} is not a note name"
        )))
    }
}

/// A file being written. Bytes come in order through [`Partial::write`]; the core confirms each
/// chunk with [`Partial::verified`] once its bytes (already written) match. Dropping a partial
/// without publishing it suspends it (see [`Partial::suspend`]).
pub trait Partial: Send + Sync + Debug {
    /// Bytes verified so far (a chunk boundary, or the size).
    fn verified_bytes(&self) -> u64;

    /// Appends the next bytes. A write failure may be reported by a later call.
    fn write(&mut self, bytes: Bytes) -> BoxFuture<'_, Result<(), StoreError>>;

    /// The next chunk, whose bytes were all written, is verified: `cv` joins the resume state.
    fn verified(&mut self, cv: Cv) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Resolves when the partial has failed on its own (a disk error in the background), with
    /// that failure; pending for as long as all is well.
    fn failure(&self) -> BoxFuture<'_, StoreError>;

    /// Every chunk is verified and the whole file's digest is `digest`: make it durable and
    /// publish it under `on_conflict`.
    fn publish(
        self: Box<Self>,
        digest: Cv,
        on_conflict: OnConflict,
    ) -> BoxFuture<'static, Result<Stored, StoreError>>;

    /// Stops writing and keeps the verified part for a resume (durably); waits until it is kept.
    fn suspend(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// Throws the partial away (its content is known to be wrong).
    fn discard(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Why a file cannot be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The peer's name is not one safe path component.
    #[error("name rejected: {0}")]
    Name(#[from] NameError),
    /// The declared size is over the server's limit per file.
    #[error("{size} bytes is over the limit of {max} bytes per file")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The store does not have room for the declared size.
    #[error("{size} bytes do not fit: {available} bytes free")]
    NoSpace {
        /// Declared size.
        size: u64,
        /// Free bytes seen when checking.
        available: u64,
    },
    /// The name is taken and the policy is [`OnConflict::Fail`] (or no free variant was found).
    #[error("{0:?} already exists")]
    Conflict(String),
    /// The bytes written do not match the declared size.
    #[error("{written} bytes written but {expected} declared")]
    SizeMismatch {
        /// Bytes actually written.
        written: u64,
        /// Bytes declared.
        expected: u64,
    },
    /// The store is not usable (e.g. its state folder is a symlink).
    #[error("storage directory unusable: {0}")]
    BadDirectory(String),
    /// Data did not match its digest.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A request that does not fit the transfer's state (wrong offset, chunk out of order).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The store cannot do this (yet).
    #[error("not supported by this store: {0}")]
    Unsupported(String),
    /// The same resumable transfer is in progress elsewhere.
    #[error("{0:?} is being transferred by another connection")]
    Busy(String),
    /// No such file or folder.
    #[error("{0:?} not found")]
    NotFound(String),
    /// A path component exists but is not a real folder (a file, or a symlink).
    #[error("{0:?} is not a folder")]
    NotAFolder(String),
    /// Storing the file would take the server over its quota.
    #[error("{size} bytes would exceed the storage quota ({used} of {limit} bytes used)")]
    QuotaExceeded {
        /// Declared size.
        size: u64,
        /// Bytes stored or reserved now.
        used: u64,
        /// The quota.
        limit: u64,
    },
    /// A folder to remove is not empty and removal was not recursive.
    #[error("{0:?} is a folder that is not empty (remove it recursively)")]
    NotEmpty(String),
    /// A folder cannot be moved below itself.
    #[error("{0:?} cannot be moved into itself")]
    IntoItself(String),
    /// Any other failure of the medium.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}
