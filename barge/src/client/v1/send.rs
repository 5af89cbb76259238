//! The send plan: the tree walk into jobs, pipelined puts, resume after a lost connection, and
//! settling each reply into the report (a file that failed verification is sent again).

use super::link::SMALL_INLINE;
use super::list::list_on;
use super::*;

/// One thing to upload.
#[derive(Debug, Clone)]
pub(super) enum Job {
    Folder {
        remote: String,
    },
    File {
        local: PathBuf,
        remote: String,
        size: u64,
        /// Modification time, seconds since the epoch (the quick check, and the stored file's).
        mtime: i64,
    },
}

fn mtime_of(meta: &std::fs::Metadata) -> i64 {
    std::os::unix::fs::MetadataExt::mtime(meta)
}

/// What the walk could not send, with why (reported as [`Event::Skipped`], counted in
/// [`Report::skipped`]).
pub(super) type Skipped = Vec<(PathBuf, String)>;

/// Walks what the user named into folders and files with their remote paths; empty folders are
/// kept. It keeps going past what cannot be sent (unreadable folders, names the server would
/// refuse, special files, links unless followed), listing each; barge's own state (`.barge/`,
/// `.barge-*` temporaries) is left out silently. With `follow_links`, links to files and folders
/// are followed, each real folder once (no loops); without, each link is skipped and reported.
pub(super) fn plan(roots: &[PathBuf], follow_links: bool, filter: &Filter) -> (Vec<Job>, Skipped) {
    let mut jobs = Vec::new();
    let mut skipped = Vec::new();
    let mut seen_dirs = std::collections::HashSet::new();
    for root in roots {
        let meta = match std::fs::metadata(root) {
            Ok(m) => m,
            Err(e) => {
                skipped.push((root.clone(), e.to_string()));
                continue;
            }
        };
        let name = match root
            .canonicalize()
            .map(|c| c.file_name().map(|n| n.to_owned()))
        {
            Ok(Some(n)) => n,
            Ok(None) => {
                skipped.push((root.clone(), "has no file name".into()));
                continue;
            }
            Err(e) => {
                skipped.push((root.clone(), e.to_string()));
                continue;
            }
        };
        let Some(name) = usable_name(root, &name, &mut skipped) else {
            continue;
        };
        if meta.is_file() {
            jobs.push(Job::File {
                local: root.clone(),
                remote: name,
                size: meta.len(),
                mtime: mtime_of(&meta),
            });
            continue;
        }
        if !meta.is_dir() {
            skipped.push((root.clone(), "not a regular file or folder".into()));
            continue;
        }
        jobs.push(Job::Folder {
            remote: name.clone(),
        });
        if let Ok(real) = root.canonicalize() {
            seen_dirs.insert(real);
        }
        let mut stack = vec![(root.clone(), name)];
        while let Some((dir, remote)) = stack.pop() {
            let items = std::fs::read_dir(&dir).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            let mut items = match items {
                Ok(items) => items,
                Err(e) => {
                    skipped.push((dir, e.to_string()));
                    continue;
                }
            };
            items.sort_by_key(|e| e.file_name());
            for item in items {
                let path = item.path();
                let raw = item.file_name();
                if let Some(n) = raw.to_str()
                    && (n == ".barge" || n.starts_with(barge_proto::name::RESERVED_PREFIX))
                {
                    continue; // barge's own state: never the user's data
                }
                let Some(name) = usable_name(&path, &raw, &mut skipped) else {
                    continue;
                };
                let child = format!("{remote}/{name}");
                // Relative to what was named: the root folder's own name is not part of it.
                let rel = child.split_once('/').map_or("", |(_, r)| r);
                let lmeta = match std::fs::symlink_metadata(&path) {
                    Ok(m) => m,
                    Err(e) => {
                        skipped.push((path, e.to_string()));
                        continue;
                    }
                };
                let meta = if lmeta.is_symlink() {
                    if !follow_links {
                        skipped.push((path, "a symbolic link (--follow-links follows it)".into()));
                        continue;
                    }
                    match std::fs::metadata(&path) {
                        Ok(m) => m,
                        Err(e) => {
                            skipped.push((path, format!("a broken link: {e}")));
                            continue;
                        }
                    }
                } else {
                    lmeta
                };
                if !filter.admits(rel, meta.is_dir()) {
                    continue; // the user's choice: not reported
                }
                if meta.is_dir() {
                    let real = path.canonicalize().unwrap_or_else(|_| path.clone());
                    if !seen_dirs.insert(real) {
                        skipped.push((path, "a folder already sent (a link loop)".into()));
                        continue;
                    }
                    jobs.push(Job::Folder {
                        remote: child.clone(),
                    });
                    stack.push((path, child));
                } else if meta.is_file() {
                    jobs.push(Job::File {
                        local: path,
                        remote: child,
                        size: meta.len(),
                        mtime: mtime_of(&meta),
                    });
                } else {
                    skipped.push((path, "not a regular file or folder".into()));
                }
            }
        }
    }
    (jobs, skipped)
}

/// The name to send for `path`, or why not (recorded in `skipped`).
fn usable_name(path: &Path, raw: &std::ffi::OsStr, skipped: &mut Skipped) -> Option<String> {
    let Some(name) = raw.to_str() else {
        skipped.push((path.to_owned(), "its name is not valid UTF-8".into()));
        return None;
    };
    match barge_proto::name::validate_file_name(name) {
        Ok(_) => Some(name.to_owned()),
        Err(e) => {
            skipped.push((path.to_owned(), format!("its name cannot be sent: {e}")));
            None
        }
    }
}

/// Where one job stands across reconnections.
#[derive(Debug, Clone, Default)]
pub(super) struct Progress {
    finished: bool,
    tries: u32,
    /// Its `end` was sent but no reply came before the connection died: it may be stored already.
    unanswered: bool,
    /// The server's version it replaces, as decided when it was first sent.
    replaces: Option<String>,
}

/// The jobs moved below the folder `dest` on the server, which is created first (with its
/// parents) when there is anything to send.
fn below(dest: Option<&str>, jobs: Vec<Job>) -> Vec<Job> {
    let dest = dest.map_or("", |d| d.trim_matches('/'));
    if dest.is_empty() || jobs.is_empty() {
        return jobs;
    }
    let under = |remote: String| format!("{dest}/{remote}");
    let mut moved = vec![Job::Folder {
        remote: dest.to_owned(),
    }];
    moved.extend(jobs.into_iter().map(|job| match job {
        Job::Folder { remote } => Job::Folder {
            remote: under(remote),
        },
        Job::File {
            local,
            remote,
            size,
            mtime,
        } => Job::File {
            local,
            remote: under(remote),
            size,
            mtime,
        },
    }));
    moved
}

/// Uploads files and folders (each named root keeps its name on the server, folders their tree).
pub async fn send(
    dial: &dyn Dial,
    roots: &[PathBuf],
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Report, TransferError> {
    let (jobs, skipped) = plan(roots, opts.follow_links, &opts.filter);
    let jobs = below(opts.dest.as_deref(), jobs);
    let mut progress = vec![Progress::default(); jobs.len()];
    let mut report = Report::default();
    for (path, reason) in skipped {
        report.skip(&path, reason, on_event);
    }
    if jobs.is_empty() {
        return Ok(report); // nothing to send: no need to reach the server
    }
    let (files, bytes) = jobs.iter().fold((0, 0), |(n, b), job| match job {
        Job::File { size, .. } => (n + 1, b + size),
        Job::Folder { .. } => (n, b),
    });
    on_event(Event::Plan { files, bytes });
    let mut theirs: Option<Theirs> = None;
    with_retries(opts, &mut report, on_event, async |report, on_event| {
        let mut link = Link::open(dial, opts).await?;
        report.connections += 1;
        if theirs.is_none() {
            theirs = Some(their_files(&mut link, &jobs, opts).await?);
        }
        let theirs = theirs
            .as_ref()
            .ok_or_else(|| TransferError::Protocol("no listing".into()))?;
        send_pass(
            (&mut link, dial),
            &jobs,
            theirs,
            &mut progress,
            report,
            opts,
            on_event,
        )
        .await?;
        link.close().await;
        Ok(())
    })
    .await?;
    Ok(report)
}

/// What a sent request still owes us.
#[derive(Debug)]
pub(super) struct Owed {
    id: u64,
    job: usize,
    digest: Option<Cv>,
    transferred: u64,
    started: Instant,
    /// An update of a file the server had (a different version).
    replacing: bool,
}

/// What the server already holds under the paths being sent: path -> (size, digest hex), from one
/// listing of each root (empty where listing is refused: then everything is sent).
pub(super) type Theirs = std::collections::HashMap<String, Listed>;

/// A file as the server listed it.
#[derive(Debug, Clone)]
pub(super) struct Listed {
    size: u64,
    digest: String,
    mtime: i64,
}

/// Lists what the server has under each root being sent.
async fn their_files(
    link: &mut Link,
    jobs: &[Job],
    opts: &Options,
) -> Result<Theirs, TransferError> {
    let mut theirs = Theirs::new();
    // The roots are what was named, directly in `--dest` (or the top).
    let prefix = match opts.dest.as_deref().map(|d| d.trim_matches('/')) {
        Some(d) if !d.is_empty() => format!("{d}/"),
        _ => String::new(),
    };
    let is_root = |remote: &str| {
        remote
            .strip_prefix(prefix.as_str())
            .is_some_and(|r| !r.contains('/'))
    };
    for job in jobs {
        let (root, folder) = match job {
            Job::Folder { remote } if is_root(remote) => (remote, true),
            Job::File { remote, .. } if is_root(remote) => (remote, false),
            _ => continue,
        };
        let Ok(entries) = list_on(link, root, true, opts.max_listed).await? else {
            continue; // not there yet, or not ours to list: send everything
        };
        for e in entries.into_iter().filter(|e| !e.dir) {
            let path = if folder {
                format!("{root}/{}", e.path)
            } else if e.path == *root {
                root.clone()
            } else {
                continue;
            };
            let listed = Listed {
                size: e.size,
                digest: e.digest.unwrap_or_default(),
                mtime: e.mtime,
            };
            theirs.insert(path, listed);
        }
    }
    Ok(theirs)
}

/// Which chunks of our `size`-byte file the server's version (`their_size` bytes) already has:
/// asks for its CVs and compares them with ours. `None` when none match (send it all).
async fn same_chunks(
    link: &mut Link,
    remote: &str,
    (their_size, size): (u64, u64),
    file: &File,
    ours: Option<Vec<Cv>>,
) -> Result<Option<Vec<bool>>, TransferError> {
    let Some(theirs) = their_cvs(link, remote, their_size).await? else {
        return Ok(None);
    };
    let ours = match ours {
        Some(cvs) => cvs,
        None => local_cvs(file, size).await?,
    };
    let flags: Vec<bool> = ours
        .iter()
        .enumerate()
        .map(|(i, cv)| {
            let i64_ = i as u64;
            theirs.get(i) == Some(cv)
                && barge_proto::tree::chunk_len(size, i64_)
                    == barge_proto::tree::chunk_len(their_size, i64_)
        })
        .collect();
    Ok(flags.iter().any(|&f| f).then_some(flags))
}

/// The chunk CVs of our whole file (read on a blocking thread).
async fn local_cvs(file: &File, size: u64) -> Result<Vec<Cv>, TransferError> {
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    tokio::task::spawn_blocking(move || prefix_cvs(&cloned, size))
        .await
        .map_err(|e| TransferError::Lost(io::Error::other(e)))?
        .map_err(TransferError::Lost)
}

/// The server's chunk CVs of `remote`, page by page; `None` if it will not say (the rest of the
/// update then sends the whole file). Bounded by the size listed.
async fn their_cvs(
    link: &mut Link,
    remote: &str,
    their_size: u64,
) -> Result<Option<Vec<Cv>>, TransferError> {
    let id = link.id();
    link.request(&Request::Cvs {
        id,
        path: remote.to_owned(),
    })
    .await?;
    let expected = barge_proto::tree::chunk_count(their_size) as usize;
    let mut cvs: Vec<Cv> = Vec::new();
    loop {
        let reply = link.reply().await?;
        if reply.id != id {
            return Err(TransferError::Protocol("reply to another request".into()));
        }
        if reply.status != Status::Ok {
            return Ok(None);
        }
        if reply.size != Some(their_size) {
            return Ok(None); // changed since it was listed: the put's `replaces` will say so
        }
        let page = reply.cvs.unwrap_or_default();
        if page.len() % 64 != 0 || cvs.len() + page.len() / 64 > expected {
            return Err(TransferError::Protocol(
                "the server sent malformed CVs".into(),
            ));
        }
        for hexed in page.as_bytes().chunks(64) {
            let cv = std::str::from_utf8(hexed)
                .ok()
                .and_then(parse_hex)
                .ok_or_else(|| TransferError::Protocol("the server sent malformed CVs".into()))?;
            cvs.push(cv);
        }
        if !reply.more.unwrap_or(false) {
            return Ok((cvs.len() == expected).then_some(cvs));
        }
    }
}

/// How a file the server already has is treated (`--on-conflict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExisting {
    /// Identical: left alone; different: replaced by ours (an update of the version listed).
    #[default]
    Update,
    /// Left alone, whatever its content.
    Skip,
    /// Identical: left alone; different: ours is stored beside it under the server's rename rule.
    Rename,
    /// Replaced by ours, even when identical (everything is sent again).
    Overwrite,
    /// Identical: left alone; different: reported as a conflict, not sent.
    Fail,
}

/// What to do with a file the server has as `theirs` (size, digest): `None` to send it as planned
/// (with `replaces` set for an update), or the outcome that replaces sending.
enum Decision {
    /// With our chunk CVs when deciding needed them.
    Send {
        replaces: Option<String>,
        ours: Option<Vec<Cv>>,
    },
    Unchanged,
    Skip(String),
    Conflict(String),
}

/// rsync's quick check: the server lists a file of the same size and modification time (barge
/// gives a stored file the sender's), and neither `--checksum` nor `overwrite` asks for more.
fn quick_check(opts: &Options, theirs: Option<&Listed>, (size, mtime): (u64, i64)) -> bool {
    theirs.is_some_and(|t| t.size == size && t.mtime == mtime)
        && !opts.checksum
        && opts.on_existing != OnExisting::Overwrite
}

async fn decide(
    opts: &Options,
    theirs: Option<&Listed>,
    (size, mtime): (u64, i64),
    file: &File,
) -> Result<Decision, TransferError> {
    let Some(theirs) = theirs else {
        return Ok(Decision::Send {
            replaces: None,
            ours: None,
        });
    };
    let replace = || Decision::Send {
        replaces: Some(theirs.digest.clone()),
        ours: None,
    };
    let policy = opts.on_existing;
    if policy == OnExisting::Overwrite {
        return Ok(replace());
    }
    // rsync's quick check: the same size and modification time (barge gives a stored file the
    // sender's) is the same file, unless --checksum asks for digests. Then size, then digest.
    let same = if theirs.size != size {
        false
    } else if theirs.mtime == mtime && !opts.checksum {
        true
    } else if size > CHUNK && policy == OnExisting::Update {
        // Likely an update: it needs the chunk CVs anyway, and they give the digest too, so the
        // file is read once (32 bytes of CVs per MiB are kept for the update).
        let cvs = local_cvs(file, size).await?;
        let same = parse_hex(&theirs.digest) == barge_proto::tree::file_digest(&cvs, size, None);
        if !same {
            return Ok(Decision::Send {
                replaces: Some(theirs.digest.clone()),
                ours: Some(cvs),
            });
        }
        true
    } else {
        parse_hex(&theirs.digest) == Some(whole_digest(file).await?)
    };
    Ok(match (policy, same) {
        (_, true) => Decision::Unchanged,
        (OnExisting::Skip, false) => {
            Decision::Skip("exists on the server (--on-conflict skip)".into())
        }
        (OnExisting::Fail, false) => Decision::Conflict(
            "exists on the server with other content (--on-conflict fail)".into(),
        ),
        (OnExisting::Rename, false) => Decision::Send {
            replaces: None,
            ours: None,
        },
        (OnExisting::Update | OnExisting::Overwrite, false) => replace(),
    })
}

pub(super) async fn send_pass(
    (link, dial): (&mut Link, &dyn Dial),
    jobs: &[Job],
    theirs: &Theirs,
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    // Files that failed verification are put back; each round sends them again, until every job
    // is finished (done, or failed too often: `settle` counts the tries).
    while progress.iter().any(|p| !p.finished) {
        send_round((link, dial), jobs, theirs, progress, report, opts, on_event).await?;
    }
    Ok(())
}

/// Visits every unfinished job once, in order, pipelining requests, and settles every reply.
pub(super) async fn send_round(
    (link, dial): (&mut Link, &dyn Dial),
    jobs: &[Job],
    theirs: &Theirs,
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    let mut owed: VecDeque<Owed> = VecDeque::new();
    for index in 0..jobs.len() {
        if progress[index].finished {
            continue;
        }
        match &jobs[index] {
            Job::Folder { remote } if opts.dry_run => {
                progress[index].finished = true;
                on_event(Event::WouldTransfer {
                    path: remote.clone(),
                    size: 0,
                    action: "folder".into(),
                });
            }
            Job::Folder { remote } => {
                let id = link.id();
                link.request(&Request::Mkdir {
                    id,
                    path: remote.clone(),
                })
                .await?;
                owed.push_back(Owed {
                    id,
                    job: index,
                    digest: None,
                    transferred: 0,
                    started: Instant::now(),
                    replacing: false,
                });
            }
            Job::File {
                local,
                remote,
                size,
                mtime,
            } => {
                let quick = !progress[index].unanswered
                    && quick_check(opts, theirs.get(remote), (*size, *mtime));
                // The quick check needs no file: a tree of unchanged files is not even opened.
                let file = if quick {
                    None
                } else {
                    match File::open(local) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            // Unreadable since the walk: reported, and the rest goes on.
                            progress[index].finished = true;
                            report.skip(local, e.to_string(), on_event);
                            continue;
                        }
                    }
                };
                let (replaces, ours) = if progress[index].unanswered {
                    (progress[index].replaces.clone(), None) // decided on an earlier connection
                } else {
                    let decision = match &file {
                        None => Decision::Unchanged,
                        Some(file) => {
                            decide(opts, theirs.get(remote), (*size, *mtime), file).await?
                        }
                    };
                    match decision {
                        Decision::Send { replaces, ours } => (replaces, ours),
                        Decision::Unchanged => {
                            progress[index].finished = true;
                            report.unchanged += 1;
                            report.bytes += size;
                            on_event(Event::Unchanged {
                                path: remote.clone(),
                                size: *size,
                            });
                            continue;
                        }
                        Decision::Skip(why) => {
                            progress[index].finished = true;
                            report.skip(local, why, on_event);
                            continue;
                        }
                        Decision::Conflict(why) => {
                            progress[index].finished = true;
                            report.fail(remote, Status::Conflict, why, on_event);
                            continue;
                        }
                    }
                };
                let Some(file) = file else {
                    continue; // unchanged by the quick check, reported above
                };
                if opts.dry_run {
                    progress[index].finished = true;
                    report.would_transfer.0 += 1;
                    report.would_transfer.1 += size;
                    let action = if replaces.is_some() { "update" } else { "send" };
                    on_event(Event::WouldTransfer {
                        path: remote.clone(),
                        size: *size,
                        action: action.into(),
                    });
                    continue;
                }
                progress[index].replaces = replaces.clone();
                // An update of a large file sends only the chunks that differ from the server's.
                let reuse = match (&replaces, theirs.get(remote)) {
                    (Some(_), Some(listed))
                        if *size > CHUNK && listed.size > CHUNK && !progress[index].unanswered =>
                    {
                        settle_all(link, &mut owed, jobs, progress, report, opts, on_event).await?;
                        same_chunks(link, remote, (listed.size, *size), &file, ours).await?
                    }
                    _ => None,
                };
                // Small files are pipelined without asking; larger ones may resume, and one whose
                // reply was lost may be stored already, so for those ask first.
                let from = if *size > CHUNK || progress[index].unanswered {
                    settle_all(link, &mut owed, jobs, progress, report, opts, on_event).await?;
                    let resume = resume_point(link, remote, *size, &file).await?;
                    if progress[index].unanswered
                        && let Some(theirs) = resume.stored
                        && theirs == whole_digest(&file).await?
                    {
                        progress[index].finished = true;
                        report.files += 1;
                        report.bytes += size;
                        on_event(Event::Done {
                            path: remote.clone(),
                            stored: remote.clone(),
                            size: *size,
                            transferred: 0,
                            digest: hex(&theirs),
                            secs: 0.0,
                        });
                        continue;
                    }
                    resume.from
                } else {
                    0
                };
                let at = PutAt {
                    from,
                    replaces,
                    reuse,
                    mtime: *mtime,
                };
                let owed_entry =
                    upload_file((link, dial, opts), index, remote, *size, file, at, on_event)
                        .await?;
                owed.push_back(owed_entry);
                progress[index].unanswered = true;
            }
        }
        // Take whatever replies have arrived, so events flow while the pipeline stays full.
        while let Some(reply) = link.ready_reply()? {
            settle(reply, &mut owed, jobs, progress, report, opts, on_event)?;
        }
    }
    settle_all(link, &mut owed, jobs, progress, report, opts, on_event).await
}

/// Where to start an upload, and what the server already stores at its path.
pub(super) struct Resume {
    /// First byte to send.
    from: u64,
    /// Digest of a file of the same size already stored at the path.
    stored: Option<Cv>,
}

/// The BLAKE3 digest of a whole local file (read on a blocking thread).
pub(super) async fn whole_digest(file: &File) -> Result<Cv, TransferError> {
    // Positioned reads: a clone shares the file's offset, which the upload reads from next.
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut h = blake3::Hasher::new();
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = 0;
        loop {
            let n = cloned.read_at(&mut buf, at)?;
            if n == 0 {
                return Ok(*h.finalize().as_bytes());
            }
            h.update(&buf[..n]);
            at += n as u64;
        }
    })
    .await
    .map_err(|e| TransferError::Lost(io::Error::other(e)))?
    .map_err(TransferError::Lost)
}

/// Asks the server what it kept of `remote` and checks that our file still starts the same way;
/// returns where to start. A refusal is left for the `put` to report, in order.
pub(super) async fn resume_point(
    link: &mut Link,
    remote: &str,
    size: u64,
    file: &File,
) -> Result<Resume, TransferError> {
    let id = link.id();
    link.request(&Request::Probe {
        id,
        path: remote.to_owned(),
        size,
    })
    .await?;
    let reply = link.reply().await?;
    if reply.status == Status::Busy {
        // Usually our own previous connection, not yet noticed as gone by the server.
        return Err(TransferError::Lost(io::Error::other(
            reply.message.unwrap_or_default(),
        )));
    }
    let offset = reply.offset.unwrap_or(0);
    let stored = reply.digest.as_deref().and_then(parse_hex);
    if reply.status != Status::Ok || offset == 0 {
        return Ok(Resume { from: 0, stored });
    }
    let theirs = reply.prefix.as_deref().and_then(parse_hex);
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    let ours = tokio::task::spawn_blocking(move || prefix_cvs(&cloned, offset))
        .await
        .map_err(|e| TransferError::Lost(io::Error::other(e)))?
        .map_err(TransferError::Lost)?;
    let from = if theirs == Some(prefix_digest(&ours)) {
        offset
    } else {
        0
    };
    Ok(Resume { from, stored })
}

/// Where a put starts, the version it replaces (an update), and the chunks of that version the
/// server takes instead of receiving them.
pub(super) struct PutAt {
    from: u64,
    replaces: Option<String>,
    reuse: Option<Vec<bool>>,
    mtime: i64,
}

/// Sends one file from `from`: put, data, end. Returns what the server owes for it.
pub(super) async fn upload_file(
    (link, dial, opts): (&mut Link, &dyn Dial, &Options),
    job: usize,
    remote: &str,
    size: u64,
    file: File,
    at: PutAt,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Owed, TransferError> {
    let PutAt {
        from,
        replaces,
        reuse,
        mtime,
    } = at;
    let replacing = replaces.is_some();
    let reused = |index: u64| reuse.as_ref().is_some_and(|r| r[index as usize]);
    let id = link.id();
    let started = Instant::now();
    on_event(Event::Start {
        path: remote.to_owned(),
        size,
        offset: from,
    });
    let streams = match reuse {
        None => super::stripe::streams_for(opts, size, from),
        Some(_) => 1, // an update sends few chunks, scattered
    };
    let stripe = match streams {
        1 => None,
        streams => Some(barge_proto::wire::Stripe {
            key: super::stripe::new_key()?,
            streams,
        }),
    };
    link.request(&Request::Put {
        id,
        path: remote.to_owned(),
        size,
        from,
        replaces,
        reuse: reuse.as_deref().map(barge_proto::wire::format_chunk_set),
        mtime: Some(mtime),
        stripe: stripe.clone(),
    })
    .await?;
    let cloned = file.try_clone().map_err(TransferError::Lost)?;
    let mut cvs = if from > 0 {
        tokio::task::spawn_blocking(move || prefix_cvs(&cloned, from))
            .await
            .map_err(|e| TransferError::Lost(io::Error::other(e)))?
            .map_err(TransferError::Lost)?
    } else {
        Vec::new()
    };
    let mut single = None;
    if size <= CHUNK && from == size && size > 0 {
        // The server kept the whole (single-chunk) file; its root is a plain hash of its bytes.
        let mut bytes = vec![0u8; size as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 0).map_err(|source| {
            TransferError::Local {
                path: remote.into(),
                source,
            }
        })?;
        single = Some(bytes::Bytes::from(bytes));
    }
    // Bytes that cross the network (an update's reused chunks do not).
    let mut sent = 0u64;
    if from == 0 && size > 0 && size <= SMALL_INLINE {
        // A small file is read right here: a page-cache read costs less than handing it to a
        // blocking thread and back, which dominated sending thousands of small files.
        let data = crate::chunks::read_next(&file, size)
            .map(bytes::Bytes::from)
            .map_err(|source| TransferError::Local {
                path: remote.into(),
                source,
            })?;
        let cv = barge_proto::tree::chunk_cv(0, &data);
        cvs.push(cv);
        single = Some(data.clone());
        sent = size;
        link.data(&cv, data).await?;
    } else if let Some(stripe) = &stripe {
        let striped = super::stripe::send_chunks(
            (link, dial, opts),
            (id, &stripe.key, stripe.streams),
            remote,
            &file,
            (size, from),
            on_event,
        )
        .await?;
        if striped.refused {
            let owed = Owed {
                id,
                job,
                digest: None,
                transferred: striped.bytes,
                started,
                replacing,
            };
            return end_refused(link, owed).await;
        }
        cvs.extend(striped.cvs);
        sent = striped.bytes;
    } else {
        let mut chunks = read_chunks(file, size, from);
        let mut done = from;
        let mut throttle = Throttle::new();
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk.map_err(|source| TransferError::Local {
                path: remote.into(),
                source,
            })?;
            cvs.push(chunk.cv);
            if size <= CHUNK {
                single = Some(chunk.data.clone());
            }
            if reused(chunk.index) {
                continue; // the server has it: only its CV counts, for the digest
            }
            done += chunk.data.len() as u64;
            sent += chunk.data.len() as u64;
            link.data(&chunk.cv, chunk.data).await?;
            throttle.tick(remote, done, size, on_event);
            if link.refused_already(id)? {
                let owed = Owed {
                    id,
                    job,
                    digest: None,
                    transferred: sent,
                    started,
                    replacing,
                };
                return end_refused(link, owed).await;
            }
        }
    }
    if size == 0 {
        single = Some(bytes::Bytes::new());
    }
    let digest = file_digest(&cvs, size, single.as_deref())
        .ok_or_else(|| TransferError::Protocol("cannot compute the file digest".into()))?;
    link.request(&Request::End {
        id,
        digest: hex(&digest),
    })
    .await?;
    Ok(Owed {
        id,
        job,
        digest: Some(digest),
        transferred: sent,
        started,
        replacing,
    })
}

/// Closes a put the server refused while it was being sent (too large, no space, ...): the rest
/// would only be skipped there. `end` ends its frames; the refusal is settled in order.
async fn end_refused(link: &mut Link, owed: Owed) -> Result<Owed, TransferError> {
    link.request(&Request::End {
        id: owed.id,
        digest: hex(&[0; 32]),
    })
    .await?;
    Ok(owed)
}

pub(super) async fn settle_all(
    link: &mut Link,
    owed: &mut VecDeque<Owed>,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    while !owed.is_empty() {
        let reply = link.reply().await?;
        settle(reply, owed, jobs, progress, report, opts, on_event)?;
    }
    Ok(())
}

/// Applies one reply to what it answers.
pub(super) fn settle(
    reply: Reply,
    owed: &mut VecDeque<Owed>,
    jobs: &[Job],
    progress: &mut [Progress],
    report: &mut Report,
    opts: &Options,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<(), TransferError> {
    let Some(pos) = owed.iter().position(|o| o.id == reply.id) else {
        return Err(TransferError::Protocol(format!(
            "reply to unknown request {}",
            reply.id
        )));
    };
    let Some(o) = owed.remove(pos) else {
        return Ok(());
    };
    let (remote, size) = match &jobs[o.job] {
        Job::Folder { remote } => (remote.clone(), 0),
        Job::File { remote, size, .. } => (remote.clone(), *size),
    };
    let p = &mut progress[o.job];
    p.unanswered = false;
    match reply.status {
        Status::Ok => {
            p.finished = true;
            match &jobs[o.job] {
                Job::Folder { .. } => {
                    report.folders += 1;
                    on_event(Event::Folder { path: remote });
                }
                Job::File { .. } => {
                    let theirs = reply.digest.as_deref().and_then(parse_hex);
                    if theirs != o.digest {
                        return Err(TransferError::Protocol(
                            "the server confirmed a different digest".into(),
                        ));
                    }
                    report.files += 1;
                    report.updated += u64::from(o.replacing);
                    report.bytes += size;
                    report.transferred += o.transferred;
                    on_event(Event::Done {
                        path: remote.clone(),
                        stored: reply.path.unwrap_or(remote),
                        size,
                        transferred: o.transferred,
                        digest: reply.digest.unwrap_or_default(),
                        secs: millis(o.started.elapsed()),
                    });
                }
            }
        }
        Status::Integrity if p.tries < opts.retries => {
            // Corrupted in transit: the server kept the verified part; send the rest again.
            p.tries += 1;
            on_event(Event::Retry {
                attempt: p.tries,
                of: opts.retries,
                wait_ms: 0,
                reason: format!("{remote}: {}", reply.message.unwrap_or_default()),
            });
        }
        status => {
            p.finished = true;
            let message = reply.message.unwrap_or_default();
            report.fail(&remote, status, message, on_event);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| match j {
                Job::Folder { remote } => format!("{remote}/"),
                Job::File { remote, size, .. } => format!("{remote}={size}"),
            })
            .collect()
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("photos");
        std::fs::create_dir_all(root.join("2024/empty")).unwrap();
        std::fs::write(root.join("a.jpg"), b"a").unwrap();
        std::fs::write(root.join("2024/b.jpg"), b"bb").unwrap();
        std::os::unix::fs::symlink(root.join("a.jpg"), root.join("2024/link.jpg")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("2024/loop")).unwrap();
        (d, root)
    }

    #[test]
    fn a_tree_keeps_its_root_name_and_empty_folders_and_reports_links_it_does_not_follow() {
        let (_d, root) = tree();
        std::fs::create_dir_all(root.join(".barge/partial")).unwrap();
        std::fs::write(root.join(".barge-0123.part"), b"x").unwrap();
        std::fs::write(root.join("back\\slash.txt"), b"x").unwrap();
        let (jobs, skipped) = plan(std::slice::from_ref(&root), false, &Filter::default());
        let jobs = shown(&jobs);
        let mut sorted = jobs.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "photos/",
                "photos/2024/",
                "photos/2024/b.jpg=2",
                "photos/2024/empty/",
                "photos/a.jpg=1",
            ]
        );
        // A folder is made before anything in it.
        let at = |s: &str| jobs.iter().position(|j| j == s).unwrap();
        assert!(
            at("photos/") < at("photos/2024/") && at("photos/2024/") < at("photos/2024/b.jpg=2")
        );
        // Each link and the bad name are reported; barge's own state is not.
        let mut why: Vec<String> = skipped
            .iter()
            .map(|(p, _)| p.strip_prefix(&root).unwrap().display().to_string())
            .collect();
        why.sort();
        assert_eq!(why, ["2024/link.jpg", "2024/loop", "back\\slash.txt"]);
        // One file is sent under its own name.
        let (one, none) = plan(&[root.join("a.jpg")], false, &Filter::default());
        assert_eq!((shown(&one), none.len()), (vec!["a.jpg=1".to_owned()], 0));
    }

    #[test]
    fn followed_links_are_sent_and_a_loop_is_cut() {
        let (_d, root) = tree();
        let (jobs, skipped) = plan(std::slice::from_ref(&root), true, &Filter::default());
        let jobs = shown(&jobs);
        assert!(
            jobs.contains(&"photos/2024/link.jpg=1".to_owned()),
            "{jobs:?}"
        );
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].0.ends_with("2024/loop") && skipped[0].1.contains("loop"));
    }

    #[test]
    fn a_missing_root_or_an_unreadable_folder_is_reported_and_the_rest_goes_on() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let fine = d.path().join("fine.txt");
        std::fs::write(&fine, b"ok").unwrap();
        let (jobs, skipped) = plan(&[missing.clone(), fine], false, &Filter::default());
        assert_eq!(shown(&jobs), ["fine.txt=2"]);
        assert_eq!(skipped[0].0, missing);
    }
}
