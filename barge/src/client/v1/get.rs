//! The getter: plans what to fetch from a listing, then fetches each file through the transfer
//! core into the output folder's store, resuming only the same content (conditional get).

use super::list::list_on;
use super::*;

/// One thing to download.
#[derive(Debug, Clone)]
pub(super) enum GetJob {
    Folder { local: String },
    File(RemoteFile),
}

/// A file to fetch, as listed.
#[derive(Debug, Clone)]
pub(super) struct RemoteFile {
    remote: String,
    local: String,
    size: u64,
    digest: String,
    /// The server's modification time, given to the local copy.
    mtime: i64,
}

/// Downloads files or folders into `out`, verified and resumable. A local file with the same
/// content is left alone; one with other content is treated as [`Options::on_existing`] says
/// (replaced atomically by default).
pub async fn get(
    dial: &dyn Dial,
    names: &[String],
    out: &Path,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Report, TransferError> {
    let store = LocalStore::open(LocalConfig {
        // `-o` may be a large folder of the user's: only barge's own state is looked at.
        sweep_tree: false,
        writers: opts.writers.clone(),
        fsync: opts.fsync,
        // A dry run changes nothing here, not even barge's own state folder.
        look_only: opts.dry_run,
        ..LocalConfig::new(out)
    })
    .map_err(|e| match e {
        // Name the folder: "permission denied" alone does not say where.
        StoreError::Io(source) => TransferError::Local {
            path: out.to_owned(),
            source,
        },
        other => TransferError::Storage(other),
    })?;
    let getter = Getter {
        store,
        on_existing: opts.on_existing,
        dry_run: opts.dry_run,
    };
    let mut jobs: Option<Vec<GetJob>> = None;
    let mut finished: Vec<bool> = Vec::new();
    let mut report = Report::default();
    with_retries(opts, &mut report, on_event, async |report, on_event| {
        let mut link = Link::open(dial, opts).await?;
        report.connections += 1;
        if jobs.is_none() {
            let planned = plan_get(&mut link, names, opts, report, on_event).await?;
            let (files, bytes) = planned.iter().fold((0, 0), |(n, b), job| match job {
                GetJob::File(f) => (n + 1, b + f.size),
                GetJob::Folder { .. } => (n, b),
            });
            on_event(Event::Plan { files, bytes });
            finished = vec![false; planned.len()];
            jobs = Some(planned);
        }
        let Some(jobs) = jobs.as_ref() else {
            return Ok(());
        };
        for (i, job) in jobs.iter().enumerate() {
            if finished[i] {
                continue;
            }
            match job {
                GetJob::Folder { local } if opts.dry_run => {
                    on_event(Event::WouldTransfer {
                        path: local.clone(),
                        size: 0,
                        action: "folder".into(),
                    });
                }
                GetJob::Folder { local } => {
                    getter.store.mkdir(local).await?;
                    report.folders += 1;
                    on_event(Event::Folder {
                        path: local.clone(),
                    });
                }
                GetJob::File(file) => getter.download(&mut link, file, report, on_event).await?,
            }
            finished[i] = true;
        }
        link.close().await;
        Ok(())
    })
    .await?;
    if opts.delete
        && let Some(jobs) = &jobs
    {
        prune(out, jobs, opts, &mut report, on_event);
    }
    Ok(report)
}

/// `--delete`: removes what the folders fetched hold locally and the server does not (files the
/// filter leaves out are kept, and barge's own state; folders only once empty). Only below the
/// folders named, never a file named by itself.
fn prune(
    out: &Path,
    jobs: &[GetJob],
    opts: &Options,
    report: &mut Report,
    on_event: &mut (dyn FnMut(Event) + Send),
) {
    let keep: std::collections::HashSet<&str> = jobs
        .iter()
        .map(|j| match j {
            GetJob::Folder { local } => local.as_str(),
            GetJob::File(f) => f.local.as_str(),
        })
        .collect();
    let bases = jobs.iter().filter_map(|j| match j {
        GetJob::Folder { local } if !local.contains('/') => Some(local.clone()),
        _ => None,
    });
    for base in bases {
        // Depth first, children before their folder, so emptied folders can go too.
        let mut stack = vec![(base.clone(), false)];
        while let Some((rel, visited)) = stack.pop() {
            let path = out.join(&rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let inner = rel.split_once('/').map_or("", |(_, r)| r);
            let ours = rel == base || keep.contains(rel.as_str());
            if meta.is_dir() && !visited {
                stack.push((rel.clone(), true));
                let Ok(items) = std::fs::read_dir(&path) else {
                    continue;
                };
                for item in items.flatten() {
                    let Ok(name) = item.file_name().into_string() else {
                        continue;
                    };
                    if name == ".barge" || name.starts_with(barge_proto::name::RESERVED_PREFIX) {
                        continue;
                    }
                    stack.push((format!("{rel}/{name}"), false));
                }
                continue;
            }
            if ours || !opts.filter.admits(inner, meta.is_dir()) {
                continue;
            }
            if opts.dry_run {
                on_event(Event::WouldTransfer {
                    path: rel,
                    size: meta.len(),
                    action: "delete".into(),
                });
                continue;
            }
            let removed = if meta.is_dir() {
                std::fs::remove_dir(&path) // only when empty: what is kept inside stays
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                report.deleted += 1;
                on_event(Event::Deleted { path: rel });
            }
        }
    }
}

pub(super) async fn plan_get(
    link: &mut Link,
    names: &[String],
    opts: &Options,
    report: &mut Report,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Vec<GetJob>, TransferError> {
    let mut jobs = Vec::new();
    for name in names {
        let name = name.trim_matches('/');
        let base = name.rsplit('/').next().unwrap_or(name).to_owned();
        match list_on(link, name, true, opts.max_listed).await? {
            Err((status, message)) => {
                report.fail(name, status, message, on_event);
            }
            Ok(entries) => {
                let single_file = entries.len() == 1 && !entries[0].dir && entries[0].path == base;
                if single_file {
                    let e = &entries[0];
                    jobs.push(GetJob::File(RemoteFile {
                        remote: name.to_owned(),
                        local: base,
                        size: e.size,
                        digest: e.digest.clone().unwrap_or_default(),
                        mtime: e.mtime,
                    }));
                    continue;
                }
                jobs.push(GetJob::Folder {
                    local: base.clone(),
                });
                for e in entries {
                    if !opts.filter.admits(&e.path, e.dir)
                        || e.path
                            .rsplit_once('/')
                            .is_some_and(|(dir, _)| !admits_folders(&opts.filter, dir))
                    {
                        continue;
                    }
                    let local = format!("{base}/{}", e.path);
                    if e.dir {
                        jobs.push(GetJob::Folder { local });
                    } else {
                        jobs.push(GetJob::File(RemoteFile {
                            remote: format!("{name}/{}", e.path),
                            local,
                            size: e.size,
                            digest: e.digest.unwrap_or_default(),
                            mtime: e.mtime,
                        }));
                    }
                }
            }
        }
    }
    Ok(jobs)
}

/// Whether every folder on the way to `dir` is admitted (an excluded folder excludes its tree).
fn admits_folders(filter: &Filter, dir: &str) -> bool {
    let mut at = 0;
    loop {
        let end = dir[at..].find('/').map_or(dir.len(), |i| at + i);
        if !filter.admits(&dir[..end], true) {
            return false;
        }
        if end == dir.len() {
            return true;
        }
        at = end + 1;
    }
}

/// Where downloads go: the output folder's store (resume state, verified publish) and the
/// conflict policy, through the same transfer core a server receives with.
pub(super) struct Getter {
    store: LocalStore,
    on_existing: OnExisting,
    dry_run: bool,
}

/// What one `get` of a file found on the server.
pub(super) enum Fetched {
    Stored,
    /// Refused by the server (reported).
    Refused,
    /// The file is not the one listed: its new size and digest.
    Changed(u64, String),
}

impl Getter {
    /// Downloads one file. A file that changed since it was listed is fetched anew, once; one that
    /// keeps changing is reported rather than chased.
    async fn download(
        &self,
        link: &mut Link,
        file: &RemoteFile,
        report: &mut Report,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(), TransferError> {
        // What is here already: the same content is left alone (its digest is cached by barge when
        // it stored it, so this is cheap); other content follows the policy.
        let on_conflict = match self.store.stat(&file.local).await {
            Ok(Some(mine)) => {
                let same = mine.size == file.size && hex(&mine.digest) == file.digest;
                match (self.on_existing, same) {
                    (OnExisting::Overwrite, _) => OnConflict::Overwrite,
                    (_, true) => {
                        report.unchanged += 1;
                        report.bytes += file.size;
                        on_event(Event::Unchanged {
                            path: file.remote.clone(),
                            size: file.size,
                        });
                        return Ok(());
                    }
                    (OnExisting::Skip, false) => {
                        let why = "exists here (--on-conflict skip)".to_owned();
                        report.skip(Path::new(&file.local), why, on_event);
                        return Ok(());
                    }
                    (OnExisting::Fail, false) => {
                        let why = "exists here with other content (--on-conflict fail)".to_owned();
                        report.fail(&file.remote, Status::Conflict, why, on_event);
                        return Ok(());
                    }
                    (OnExisting::Rename, false) => OnConflict::Rename,
                    (OnExisting::Update, false) if self.dry_run => OnConflict::Overwrite,
                    (OnExisting::Update, false) => {
                        report.updated += 1;
                        OnConflict::Overwrite
                    }
                }
            }
            // Nothing there: if something appears meanwhile, keep both.
            _ => OnConflict::Rename,
        };
        if self.dry_run {
            report.would_transfer.0 += 1;
            report.would_transfer.1 += file.size;
            let action = if on_conflict == OnConflict::Overwrite {
                "update"
            } else {
                "send"
            };
            on_event(Event::WouldTransfer {
                path: file.remote.clone(),
                size: file.size,
                action: action.into(),
            });
            return Ok(());
        }
        let mut want = (file.size, file.digest.clone());
        for _ in 0..2 {
            match self
                .fetch(link, file, (want.0, &want.1), on_conflict, report, on_event)
                .await?
            {
                Fetched::Stored | Fetched::Refused => return Ok(()),
                Fetched::Changed(size, digest) => want = (size, digest),
            }
        }
        let message = "the file changed on the server while being fetched".to_owned();
        report.fail(&file.remote, Status::Integrity, message, on_event);
        Ok(())
    }

    /// One attempt at `file`, expected to be `size` bytes with `digest`.
    async fn fetch(
        &self,
        link: &mut Link,
        file: &RemoteFile,
        (size, digest): (u64, &str),
        on_conflict: OnConflict,
        report: &mut Report,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Fetched, TransferError> {
        let (remote, local) = (&file.remote[..], &file.local[..]);
        let started = Instant::now();
        let Some(expected) = parse_hex(digest) else {
            return Err(TransferError::Protocol(
                "server sent a malformed digest".into(),
            ));
        };
        // A partial from an earlier run is keyed by the digest: it resumes only the same content.
        let version = Version::Digest(expected);
        let from = crate::transfer::kept(&self.store, local, size, version)
            .await
            .map_or(0, |(offset, _)| offset);
        let id = link.id();
        link.request(&Request::Get {
            id,
            path: remote.to_owned(),
            from,
            // Resuming: only if the file is still the one our kept chunks belong to.
            digest: (from > 0).then(|| digest.to_owned()),
        })
        .await?;
        let reply = link.reply().await?;
        // A conditional get refused: the file changed, and no data follows.
        let changed = reply.status == Status::Conflict && from > 0 && reply.digest.is_some();
        if reply.status != Status::Ok && !changed {
            let message = reply.message.unwrap_or_default();
            report.fail(remote, reply.status, message, on_event);
            return Ok(Fetched::Refused);
        }
        let their_size = reply.size.unwrap_or(0);
        let their_digest = reply.digest.clone().unwrap_or_default();
        if changed || their_size != size || their_digest != digest {
            if !changed {
                // Read past what was sent.
                for _ in from / CHUNK..chunk_count(their_size) {
                    link.frame().await?;
                }
            }
            return Ok(Fetched::Changed(their_size, their_digest));
        }
        on_event(Event::Start {
            path: remote.to_owned(),
            size,
            offset: from,
        });
        let begin = Begin {
            version,
            from,
            on_conflict,
            // The listed time belongs to the listed version only.
            mtime: (digest == file.digest).then_some(file.mtime),
            ..Begin::new(local, size)
        };
        let policy = Policy {
            on_conflict,
            ..Policy::default()
        };
        let mut upload = crate::transfer::receive(&self.store, &policy, begin, Mode::Check).await?;
        let mut done = from;
        let mut throttle = Throttle::new();
        for _ in from / CHUNK..chunk_count(size) {
            let (cv, len) = match link.next().await? {
                Incoming::Data { cv, len } => (cv, len),
                Incoming::Frame(Frame::Reply(r)) => {
                    upload.suspend().await;
                    return Err(TransferError::Lost(io::Error::other(
                        r.message.unwrap_or_else(|| "download stopped".into()),
                    )));
                }
                other => {
                    return Err(TransferError::Protocol(format!(
                        "expected file data, got {other:?}"
                    )));
                }
            };
            // Each piece is hashed and written as it arrives; the chunk is checked at its end.
            let mut written = upload.begin_chunk(cv, len as u64).await;
            let mut left = len;
            while left > 0 && written.is_ok() {
                let piece = match link.next().await? {
                    Incoming::Piece(p) => p,
                    other => {
                        return Err(TransferError::Protocol(format!(
                            "data frame interrupted by {other:?}"
                        )));
                    }
                };
                left -= piece.len().min(left);
                done += piece.len() as u64;
                written = upload.write(piece).await;
            }
            if let Err(e) = written {
                upload.suspend().await;
                // Corrupted in transit: reconnect and resume from the verified part.
                return Err(match e {
                    StoreError::Integrity(m) => TransferError::Integrity(m),
                    other => TransferError::Lost(io::Error::other(other.to_string())),
                });
            }
            throttle.tick(remote, done, size, on_event);
        }
        let stored = match upload.finish(Some(expected)).await {
            Ok(stored) => stored,
            // A digest mismatch: retrying starts over (nothing can be trusted).
            Err(StoreError::Integrity(m)) => return Err(TransferError::Integrity(m)),
            Err(e) => return Err(e.into()),
        };
        report.files += 1;
        report.bytes += size;
        report.transferred += size - from;
        let stored_rel = match local.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{}", stored.name),
            None => stored.name,
        };
        on_event(Event::Done {
            path: remote.to_owned(),
            stored: stored_rel,
            size,
            transferred: size - from,
            digest: digest.to_owned(),
            secs: millis(started.elapsed()),
        });
        Ok(Fetched::Stored)
    }
}
