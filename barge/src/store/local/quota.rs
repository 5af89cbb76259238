//! `--quota`: a cap on the bytes a server stores. Each upload reserves its declared size before a
//! byte is written; the reservation becomes stored bytes when the file is published, shrinks to the
//! bytes kept when the upload is interrupted (a resumable partial counts until it is resumed,
//! published or expired: otherwise walking away from uploads would fill the disk past the quota),
//! and is given back when the upload fails. A file replaced by an overwrite gives its bytes back.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{STATE_DIR, StoreError};

/// The quota and what is stored or reserved against it.
#[derive(Debug)]
pub struct Quota {
    limit: u64,
    used: AtomicU64,
}

impl Quota {
    /// A quota of `limit` bytes of which `used` are already stored.
    pub fn new(limit: u64, used: u64) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicU64::new(used),
        })
    }

    /// Bytes stored or reserved.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    /// The cap.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Gives back `bytes` that are no longer stored (a file replaced by an overwrite).
    pub fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// Bytes held against a quota for one upload. Dropping it gives them back; [`Reservation::keep`]
/// turns them into stored bytes.
#[derive(Debug)]
pub struct Reservation {
    quota: Option<Arc<Quota>>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `size` bytes of `quota` (always succeeds without one).
    pub fn take(quota: Option<&Arc<Quota>>, size: u64) -> Result<Self, StoreError> {
        let Some(quota) = quota else {
            return Ok(Self {
                quota: None,
                bytes: 0,
            });
        };
        quota
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(size).filter(|&total| total <= quota.limit)
            })
            .map_err(|used| StoreError::QuotaExceeded {
                size,
                used,
                limit: quota.limit,
            })?;
        Ok(Self {
            quota: Some(quota.clone()),
            bytes: size,
        })
    }

    /// Counts `bytes` that are already on disk (a partial found at start), even over the limit.
    pub fn force(quota: Option<&Arc<Quota>>, bytes: u64) -> Self {
        if let Some(q) = quota {
            q.used.fetch_add(bytes, Ordering::AcqRel);
        }
        Self {
            quota: quota.cloned(),
            bytes: if quota.is_some() { bytes } else { 0 },
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `size` bytes in all, reserving only what this reservation does not hold yet; on
    /// refusal it is unchanged.
    pub fn grow_to(&mut self, size: u64) -> Result<(), StoreError> {
        let Some(quota) = &self.quota else {
            return Ok(());
        };
        let extra = size.saturating_sub(self.bytes);
        let more = Reservation::take(Some(quota), extra)?;
        std::mem::forget(more);
        self.bytes += extra;
        Ok(())
    }

    /// Gives back everything above `size` (an interrupted upload keeps only what it received).
    pub fn shrink_to(&mut self, size: u64) {
        if size < self.bytes {
            if let Some(q) = &self.quota {
                q.release(self.bytes - size);
            }
            self.bytes = size;
        }
    }

    /// The file was published: its bytes now count as stored.
    pub fn keep(mut self) {
        self.quota = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(q) = &self.quota {
            q.used.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// The bytes of the files below `dir`, without its state folder and without following symlinks:
/// what counts against a quota when a server starts.
pub fn bytes_stored(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut pending = vec![dir.to_owned()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == STATE_DIR
                || name
                    .as_encoded_bytes()
                    .starts_with(barge_proto::name::RESERVED_PREFIX.as_bytes())
            {
                continue; // barge's own state, at any depth (older versions kept one per root)
            }
            let meta = entry.metadata()?; // does not follow a symlink
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_held_kept_or_given_back() {
        let q = Quota::new(100, 10);
        let a = Reservation::take(Some(&q), 60).unwrap();
        assert_eq!(q.used(), 70);
        let err = Reservation::take(Some(&q), 31).unwrap_err();
        assert!(matches!(err, StoreError::QuotaExceeded { used: 70, .. }));
        drop(a);
        assert_eq!(q.used(), 10);
        Reservation::take(Some(&q), 90).unwrap().keep();
        assert_eq!(q.used(), 100);
        assert!(Reservation::take(Some(&q), 1).is_err());
        assert!(Reservation::take(None, u64::MAX).is_ok());
    }

    #[test]
    fn reservations_grow_shrink_and_release() {
        let q = Quota::new(100, 0);
        let mut r = Reservation::take(Some(&q), 10).unwrap();
        r.grow_to(60).unwrap();
        assert_eq!((q.used(), r.bytes()), (60, 60));
        assert!(r.grow_to(101).is_err());
        assert_eq!((q.used(), r.bytes()), (60, 60));
        r.shrink_to(5);
        assert_eq!((q.used(), r.bytes()), (5, 5));
        let forced = Reservation::force(Some(&q), 200);
        assert_eq!(q.used(), 205);
        drop(forced);
        drop(r);
        assert_eq!(q.used(), 0);
        q.release(7); // never below zero
        assert_eq!(q.used(), 0);
    }

    #[test]
    fn counts_files_but_not_the_state_folder() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), [0; 10]).unwrap();
        std::fs::create_dir_all(d.path().join("sub/deeper")).unwrap();
        std::fs::write(d.path().join("sub/deeper/b"), [0; 5]).unwrap();
        std::fs::create_dir(d.path().join(STATE_DIR)).unwrap();
        std::fs::write(d.path().join(STATE_DIR).join("partial"), [0; 1000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).unwrap();
        assert_eq!(bytes_stored(d.path()).unwrap(), 15);
    }
}
