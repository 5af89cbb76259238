//! Remote management on the local folder: removing and renaming published files and folders,
//! never following a symlink, never replacing a name, and giving removed bytes back to the quota;
//! and front ends' notes, kept in `.barge/notes/`.

use std::fs::File;
use std::io;
use std::path::Path;

use rustix::fs::{CWD, RenameFlags, renameat_with};

use super::{LocalStore, StoreError, blocking};

impl LocalStore {
    /// See [`crate::store::Store::remove`].
    pub(super) async fn remove_path(&self, path: &str, recursive: bool) -> Result<u64, StoreError> {
        let this = self.clone();
        let path = path.to_owned();
        blocking(move || {
            let (dir, name) = this.resolve(&path, false)?;
            let full = dir.join(&name);
            let meta = match std::fs::symlink_metadata(&full) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(path));
                }
                Err(e) => return Err(e.into()),
            };
            let freed = if !meta.is_dir() {
                // A file, or a link (removed itself, never its target).
                std::fs::remove_file(&full)?;
                if meta.is_file() { meta.len() } else { 0 }
            } else if recursive {
                let bytes = file_bytes_below(&full)?;
                // std's remove_dir_all does not follow symlinks inside the tree.
                std::fs::remove_dir_all(&full)?;
                bytes
            } else {
                match std::fs::remove_dir(&full) {
                    Ok(()) => 0,
                    Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => {
                        return Err(StoreError::NotEmpty(path));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(q) = &this.inner.config.quota {
                q.release(freed);
            }
            this.sync_dir(&dir)?;
            Ok(freed)
        })
        .await?
    }

    /// See [`crate::store::Store::rename`].
    pub(super) async fn rename_path(&self, from: &str, to: &str) -> Result<(), StoreError> {
        let this = self.clone();
        let (from, to) = (from.to_owned(), to.to_owned());
        blocking(move || {
            let trimmed = |p: &str| p.trim_matches('/').to_owned();
            if trimmed(&to).starts_with(&format!("{}/", trimmed(&from))) {
                return Err(StoreError::IntoItself(from));
            }
            let (src_dir, src_name) = this.resolve(&from, false)?;
            let src = src_dir.join(&src_name);
            match std::fs::symlink_metadata(&src) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StoreError::NotFound(from));
                }
                Err(e) => return Err(e.into()),
            }
            let (dst_dir, dst_name) = this.resolve(&to, true)?;
            let dst = dst_dir.join(&dst_name);
            match renameat_with(CWD, &src, CWD, &dst, RenameFlags::NOREPLACE) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => return Err(StoreError::Conflict(to)),
                Err(rustix::io::Errno::INVAL) => return Err(StoreError::IntoItself(from)),
                Err(e) => return Err(io::Error::from(e).into()),
            }
            this.sync_dir(&src_dir)?;
            if dst_dir != src_dir {
                this.sync_dir(&dst_dir)?;
            }
            Ok(())
        })
        .await?
    }

    fn notes_dir(&self) -> std::path::PathBuf {
        self.inner.config.dir.join(super::STATE_DIR).join("notes")
    }

    /// Writes a note atomically (temp + rename), durably when the store fsyncs.
    pub(super) fn write_note(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        crate::store::check_note_name(name)?;
        let dir = self.notes_dir();
        super::real_dir(&dir)?;
        let mut temp = tempfile::NamedTempFile::new_in(&dir)?;
        std::io::Write::write_all(&mut temp, value)?;
        if self.inner.config.fsync {
            temp.as_file().sync_all()?;
        }
        temp.persist(dir.join(name)).map_err(|e| e.error)?;
        self.sync_dir(&dir)
    }

    pub(super) fn read_note(&self, name: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        crate::store::check_note_name(name)?;
        match std::fs::read(self.notes_dir().join(name)) {
            Ok(v) => Ok(Some(v.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn remove_note(&self, name: &str) -> Result<(), StoreError> {
        crate::store::check_note_name(name)?;
        match std::fs::remove_file(self.notes_dir().join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a change to `dir`'s entries durable, when the store fsyncs.
    fn sync_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if self.inner.config.fsync {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The bytes of the regular files below `dir` (links are not followed, and hold none).
fn file_bytes_below(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in std::fs::read_dir(&d)? {
            let item = item?;
            let meta = item.metadata()?; // of the entry itself: read_dir does not follow links
            if meta.is_dir() {
                stack.push(item.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}
