//! Test fixtures: an in-process server that reports how each connection ended, raw lesson-format
//! bytes, deterministic file contents, child processes that are always reaped, and the seed peers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use barge::server::{Connection, Handler, ServerConfig, serve};
use barge::service::files::FileService;
use barge::store::{LocalConfig, LocalStore, STATE_DIR, Writers};
use barge::transfer::Policy;
use barge_proto::legacy::Header;
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a test; generous so a loaded CI machine does not flake.
pub const WAIT: Duration = Duration::from_secs(30);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Polls `cond` until it holds, for state only the file system shows (a temporary file appearing).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Wraps a handler and reports each connection's outcome, so tests can await "the server is done
/// with that connection" instead of sleeping.
struct Reporting<H> {
    inner: H,
    ended: mpsc::UnboundedSender<Result<(), String>>,
}

impl<H: Handler> Handler for Reporting<H> {
    type Error = H::Error;

    async fn handle<S>(&self, conn: Connection<S>) -> Result<(), H::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let result = self.inner.handle(conn).await;
        let _ = self
            .ended
            .send(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        result
    }
}

/// An upload server on 127.0.0.1:0 storing into a temporary folder.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: TempDir,
    ended: mpsc::UnboundedReceiver<Result<(), String>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The store's writer threads, waited for at `stop` as the binary does before it exits.
    writers: Writers,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|s| s, ServerConfig::default(), "127.0.0.1:0").await
    }

    pub async fn start_with(
        storage: impl FnOnce(LocalConfig) -> LocalConfig,
        config: ServerConfig,
        addr: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // fsync off: tests check behaviour, not durability, and fsync makes them slow.
        let storage = LocalStore::open(storage(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir.path())
        }))
        .expect("storage");
        let writers = storage.config().writers.clone();
        let service = FileService::local(storage, Policy::default());
        let mut server = Self::start_service(service, config, addr, dir);
        server.writers = writers;
        server
    }

    /// A file server on a fresh folder whose core follows `policy`.
    pub async fn start_with_policy(policy: Policy, config: ServerConfig, addr: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = LocalStore::open(LocalConfig {
            fsync: false,
            ..LocalConfig::new(dir.path())
        })
        .expect("storage");
        let writers = storage.config().writers.clone();
        let mut server =
            Self::start_service(FileService::local(storage, policy), config, addr, dir);
        server.writers = writers;
        server
    }

    /// Any service on the framework (the folder is only used by upload services).
    pub fn start_service(
        service: impl Handler,
        config: ServerConfig,
        addr: &str,
        dir: TempDir,
    ) -> Self {
        let listener = barge::net::bind_tcp(addr.parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (ended_tx, ended) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handler = Arc::new(Reporting {
            inner: service,
            ended: ended_tx,
        });
        let task = tokio::spawn(serve(listener, handler, config, async {
            let _ = stop_rx.await;
        }));
        Self {
            addr,
            dir,
            ended,
            stop: Some(stop_tx),
            task: Some(task),
            writers: Writers::default(),
        }
    }

    /// How the next connection to finish ended (`Err` carries the server's reason).
    pub async fn next_end(&mut self) -> Result<(), String> {
        within("a connection to end", self.ended.recv())
            .await
            .expect("server gone")
    }

    /// Asks the server to shut down without waiting for it.
    pub fn request_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Asks the server to shut down and waits until it has.
    pub async fn stop(&mut self) {
        self.request_stop();
        if let Some(task) = self.task.take() {
            within("server shutdown", task).await.expect("server task");
        }
        let writers = self.writers.clone();
        let done = tokio::task::spawn_blocking(move || writers.wait(WAIT));
        assert!(
            done.await.expect("wait"),
            "writers still running after {WAIT:?}"
        );
    }

    /// Published file names, sorted (the state folder excluded).
    pub fn published(&self) -> Vec<String> {
        published(self.dir.path())
    }

    /// Files of unfinished lesson-format uploads: small ones are received beside their final
    /// name, larger ones in the state folder.
    pub fn temp_files(&self) -> usize {
        let beside = std::fs::read_dir(self.dir.path())
            .expect("dir")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                let name = name.to_string_lossy();
                name.starts_with(".barge-") && name.ends_with(".part")
            })
            .count();
        beside + self.partial_files()
    }

    /// Files kept for resumable barge-protocol uploads.
    pub fn partial_files(&self) -> usize {
        std::fs::read_dir(self.dir.path().join(STATE_DIR).join("partial"))
            .expect("partial dir")
            .count()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).expect("published file")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The names visible in `dir`, as a listing shows them: barge's state folder and the hidden
/// temporary files of small uploads in flight (`.barge-*`, removed by their writer a moment after
/// a failed transfer) are not published files.
pub fn published(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != STATE_DIR && !n.starts_with(barge_proto::name::RESERVED_PREFIX))
        .collect();
    names.sort();
    names
}

/// One upload as the lesson frames it.
pub fn lesson_upload(name: &str, body: &[u8]) -> Vec<u8> {
    let mut wire = Header::new(name, body.len() as u64)
        .to_bytes()
        .expect("header");
    wire.extend_from_slice(body);
    wire
}

/// A length prefix followed by `json`, for hand-made (often broken) headers.
pub fn raw_header(json: &str) -> Vec<u8> {
    let mut wire = (json.len() as i32).to_le_bytes().to_vec();
    wire.extend_from_slice(json.as_bytes());
    wire
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Connects, writes `bytes`, closes the write side and waits for the server to close: the way a
/// lesson client ends, made observable.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) {
    let mut s = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    // The server may refuse part-way and reset the connection; that is an outcome, not a failure.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    drain(&mut s).await;
}

/// Reads until the peer closes (or resets) the connection.
pub async fn drain(s: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    within("the server to close", async {
        while let Ok(n) = s.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A child process that is killed (by its own PID) and reaped when the test ends, pass or fail.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The folder holding the lesson's Python programs.
pub fn seed_dir() -> PathBuf {
    let dir = std::env::var_os("BARGE_SEED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed"));
    assert!(
        dir.join("seed_server.py").is_file(),
        "the lesson's peers are not at {} (set BARGE_SEED_DIR)",
        dir.display()
    );
    dir
}

pub fn python_seed(script: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(seed_dir().join(script))
        .stdin(Stdio::null())
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// The barge binary built for this test run.
pub fn barge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_barge"));
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Spawns a barge server command (with `--addr 127.0.0.1:0` or similar already in it) and reads
/// the address it announces on its first stdout line. Stderr is left as the caller set it.
pub fn spawn_announced(cmd: Command) -> (ChildGuard, SocketAddr) {
    let (guard, addr, _) = spawn_announced_line(cmd);
    (guard, addr)
}

/// [`spawn_announced`], also returning the whole announcement line.
pub fn spawn_announced_line(mut cmd: Command) -> (ChildGuard, SocketAddr, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn barge");
    let stdout = child.stdout.take().expect("stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    // Blocks until the server has bound its port; a server that died yields EOF.
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read server stdout");
    let addr = line
        .split_once("listening on ")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .parse()
        .expect("address");
    (guard, addr, line)
}

/// A port that was free a moment ago, for peers (the lesson's programs) that cannot bind port 0
/// and report it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A process's peak resident memory (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// Asserts that a command succeeded, showing its stderr when it did not.
#[track_caller]
pub fn succeeded(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
