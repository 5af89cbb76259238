//! Remote management: remove, rename and create folders on a server, pipelined on one connection.

use super::*;

/// One change to make on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Remove a file or an empty folder (`recursive`: a folder with everything below it).
    Remove {
        /// Its path.
        path: String,
        /// Also what is below it.
        recursive: bool,
    },
    /// Rename a file or folder (never replacing anything).
    Move {
        /// The current path.
        from: String,
        /// The new path.
        to: String,
    },
    /// Create a folder and its parents.
    Mkdir {
        /// Its path.
        path: String,
    },
}

/// What became of one change: `Ok(bytes freed)` (0 but for a removal), or the server's refusal.
pub type Outcome = Result<u64, (Status, String)>;

/// Makes each change in order on one connection (requests pipelined, replies in order), and
/// reports each; a refused change does not stop the others.
pub async fn manage(
    dial: &dyn Dial,
    changes: &[Change],
    opts: &Options,
) -> Result<Vec<Outcome>, TransferError> {
    // Requests go out in windows, so neither side's socket buffer fills with unread replies.
    const WINDOW: usize = 256;
    let mut link = Link::open(dial, opts).await?;
    let mut outcomes = Vec::with_capacity(changes.len());
    for window in changes.chunks(WINDOW) {
        let mut ids = Vec::with_capacity(window.len());
        for change in window {
            let id = link.id();
            let request = match change.clone() {
                Change::Remove { path, recursive } => Request::Delete {
                    id,
                    path,
                    recursive,
                },
                Change::Move { from, to } => Request::Move { id, from, to },
                Change::Mkdir { path } => Request::Mkdir { id, path },
            };
            link.request(&request).await?;
            ids.push(id);
        }
        for id in ids {
            let reply = link.reply().await?;
            if reply.id != id {
                return Err(TransferError::Protocol("reply to another request".into()));
            }
            outcomes.push(match reply.status {
                Status::Ok => Ok(reply.size.unwrap_or(0)),
                status => Err((status, reply.message.unwrap_or_default())),
            });
        }
    }
    link.close().await;
    Ok(outcomes)
}
