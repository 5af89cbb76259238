//! Scale-out on a real replicated object store: several barge servers over one garage bucket (3
//! nodes, replication factor 3, started by `scripts/garage.sh up`, whose environment these tests
//! read). A server or a storage node is killed with SIGKILL mid-upload; nothing is lost.
//!
//! Without the cluster's environment the tests say so and pass on a developer's machine; under
//! CI (`CI` set) they fail instead, so the cluster stage cannot be skipped by accident.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::support::*;

/// The tests share one cluster and kill parts of it: one at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

struct Garage {
    endpoints: Vec<String>,
    bucket: String,
    dir: String,
}

fn garage() -> Option<Garage> {
    let vars = (
        std::env::var("BARGE_GARAGE_ENDPOINTS"),
        std::env::var("BARGE_GARAGE_BUCKET"),
        std::env::var("BARGE_GARAGE_DIR"),
    );
    match vars {
        (Ok(e), Ok(bucket), Ok(dir)) => Some(Garage {
            endpoints: e.split(',').map(str::to_owned).collect(),
            bucket,
            dir,
        }),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CI runs the cluster tests: start garage with scripts/garage.sh up and source its env"
            )
        }
        _ => {
            eprintln!("skipped: no garage cluster (run `scripts/garage.sh up` and source its env)");
            None
        }
    }
}

fn garage_script(args: &[&str], g: &Garage) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/garage.sh");
    let status = Command::new("bash")
        .arg(script)
        .args(args)
        .arg(&g.dir)
        .stdout(Stdio::null())
        .status()
        .expect("garage.sh");
    assert!(status.success(), "garage.sh {args:?}");
}

/// A barge server on the bucket under `prefix`, talking to garage node `node` (0-based).
fn serve_on(g: &Garage, prefix: &str, node: usize, state: &Path) -> (ChildGuard, String) {
    serve_with(g, prefix, node, state, &[])
}

/// [`serve_on`] with more options.
fn serve_with(
    g: &Garage,
    prefix: &str,
    node: usize,
    state: &Path,
    extra: &[&str],
) -> (ChildGuard, String) {
    let mut cmd = barge();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--s3-allow-http"]);
    if !extra.contains(&"--s3-part-size") {
        cmd.args(["--s3-part-size", "8M"]);
    }
    cmd.args(["--store", &format!("s3://{}/{prefix}", g.bucket)])
        .args(["--s3-endpoint", &g.endpoints[node]])
        .arg("--dir")
        .arg(state)
        .args(extra)
        .stderr(Stdio::null());
    let (guard, addr) = spawn_announced(cmd);
    (guard, addr.to_string())
}

fn unique(what: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{t:x}")
}

/// Writes `len` pseudo-random bytes (fast to make, not compressible).
fn big(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..len >> 20 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
}

fn b3(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

/// What a server listening on `port` has read from its clients' connections: what the kernel
/// received on them less what still waits to be read. Exact only while the server is stopped.
fn bytes_read_by_server(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-tniH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2)");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut queued = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if !line.starts_with(char::is_whitespace) {
            // A socket's line: Recv-Q first.
            queued = words
                .next()
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
            continue;
        }
        if let Some(n) = words.find_map(|w| w.strip_prefix("bytes_received:")) {
            total += n.parse::<u64>().unwrap().saturating_sub(queued);
        }
    }
    total
}

/// The JSON events a `barge --json` run printed.
fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What an S3 client that is not barge (boto3) sees of an object through garage node `node`:
/// its size, its `blake3` metadata and the BLAKE3 of its bytes as read.
fn boto3_view(g: &Garage, node: usize, key: &str) -> (u64, String, String) {
    // The bytes are hashed here: a BLAKE3 module for Python is not assumed.
    let code = r#"
import sys, boto3
from botocore.config import Config
endpoint, bucket, key = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
head = s3.head_object(Bucket=bucket, Key=key)
print(head["ContentLength"], head["Metadata"].get("blake3", "-"))
body = s3.get_object(Bucket=bucket, Key=key)["Body"]
out = sys.stdout.buffer
out.flush()
for piece in iter(lambda: body.read(1 << 20), b""):
    out.write(piece)
"#;
    let out = Command::new("python3")
        .args(["-c", code, &g.endpoints[node], &g.bucket, key])
        .output()
        .expect("python3 with boto3 (pip install boto3)");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let newline = out.stdout.iter().position(|&b| b == b'\n').unwrap();
    let head = String::from_utf8_lossy(&out.stdout[..newline]).into_owned();
    let (size, meta) = head.split_once(' ').unwrap();
    let digest = blake3::hash(&out.stdout[newline + 1..])
        .to_hex()
        .to_string();
    (size.parse().unwrap(), meta.to_owned(), digest)
}

/// Server A (taking `in_flight` parts at once) is stopped and killed (SIGKILL) half-way through
/// sending `file`; `barge send` pointed at server B (same bucket, another garage node) resumes
/// from what A kept in the bucket. Returns B's `done` event and the bytes re-sent; asserts that
/// they are at most `in_flight` parts and a chunk of what A had read (two chunks with more than
/// one part in flight).
fn kill_half_way_and_resume(
    g: &Garage,
    prefix: &str,
    work: &Path,
    file: &Path,
    in_flight: usize,
) -> (serde_json::Value, u64, (ChildGuard, String)) {
    let size = std::fs::metadata(file).unwrap().len();
    let n = in_flight.to_string();
    let (mut a, a_addr) = serve_with(g, prefix, 0, &work.join("a"), &["--s3-parts-in-flight", &n]);
    let (b, b_addr) = serve_on(g, prefix, 1, &work.join("b"));

    let mut client = barge()
        .arg("send")
        .arg(file)
        .args(["--to", &a_addr, "--json", "--retries", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut sent_before_kill = 0;
    let mut read_by_a = 0;
    let a_port: u16 = a_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    for line in BufReader::new(client.stdout.take().unwrap()).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line.unwrap()) else {
            continue;
        };
        if v["event"] == "progress" {
            sent_before_kill = v["done"].as_u64().unwrap();
            if sent_before_kill >= size / 2 {
                // Stopped first, so what A had read can be counted at the instant it dies;
                // nothing runs between the stop and the SIGKILL (no suspend, no cleanup).
                let pid = rustix::process::Pid::from_raw(a.0.id() as i32).unwrap();
                rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
                read_by_a = bytes_read_by_server(a_port);
                a.0.kill().unwrap();
                a.0.wait().unwrap();
                break;
            }
        }
    }
    let first = client.wait().unwrap();
    assert!(
        !first.success(),
        "the first send cannot finish without its server"
    );
    assert!(sent_before_kill >= size / 2);

    let out = barge()
        .arg("send")
        .arg(file)
        .args(["--to", &b_addr, "--json", "--retries", "20"])
        .output()
        .unwrap();
    succeeded(&out);
    let evs = events(&out.stdout);
    let start = evs.iter().find(|e| e["event"] == "start").expect("start");
    let done = evs.iter().find(|e| e["event"] == "done").expect("done");
    let resumed_at = start["offset"].as_u64().unwrap();
    let transferred = done["transferred"].as_u64().unwrap();
    assert_eq!(resumed_at + transferred, size);
    // Re-sent: what A had read (the protocol's framing included, a few bytes a chunk) and B
    // had to receive again. The client's own count also has what sat in the two socket
    // buffers, which no server can keep: printed, not bounded.
    let resent = read_by_a.saturating_sub(resumed_at);
    let mib = |n: u64| n as f64 / (1 << 20) as f64;
    eprintln!(
        "A had read {read_by_a} bytes ({:.1} MiB; the client had written {:.1} MiB) when it \
         was killed; resumed through B at {resumed_at}: re-sent {resent} bytes ({:.2} MiB)",
        mib(read_by_a),
        mib(sent_before_kill),
        mib(resent)
    );
    assert!(
        resumed_at >= size / 4 && read_by_a >= resumed_at,
        "B resumed from {resumed_at} of {read_by_a} read by A"
    );
    // With one part in flight: a part and what A had read of the next chunk. With more, a new
    // part's first chunk may also be in A's hands while older parts complete.
    let (part, chunk, framing) = (8 << 20, 1 << 20, 64 << 10);
    let chunks = if in_flight > 1 { 2 } else { 1 };
    assert!(
        resent <= in_flight as u64 * part + chunks * chunk + framing,
        "re-sent {resent} bytes: more than {in_flight} part(s) and {chunks} chunk(s)"
    );
    (done.clone(), resent, (b, b_addr))
}

/// Parts stream to the bucket: with 64 MiB parts and an 8 MiB pool, a server taking two 256 MiB
/// uploads at once stays far below even one part's size (a part buffered whole would be 64 MiB,
/// and two uploads with two parts in flight four times that).
#[test]
fn memory_stays_within_the_pool_whatever_the_part_size() {
    let Some(g) = garage() else { return };
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let prefix = unique("memory");
    let file = work.path().join("big.bin");
    big(&file, 256 << 20);
    let (server, addr) = serve_with(
        &g,
        &prefix,
        0,
        &work.path().join("s"),
        &["--s3-part-size", "64M", "--s3-memory", "8M"],
    );
    let sends: Vec<_> = (0..2)
        .map(|i| {
            barge()
                .arg("send")
                .arg(&file)
                .args(["--to", &addr, "--dest", &format!("c{i}"), "-q"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut send in sends {
        assert!(send.wait().unwrap().success());
    }
    let peak_mib = peak_rss_kib(server.0.id()) / 1024;
    eprintln!("server peak RSS with two 256 MiB uploads in 64 MiB parts: {peak_mib} MiB");
    assert!(peak_mib < 48, "server peak RSS {peak_mib} MiB");
    let digest = b3(&file);
    let out = barge()
        .args(["ls", &addr, "-r", "--json"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listing.matches(digest.as_str()).count(), 2, "{listing}");
}

/// With the default two parts at once (faster on the cluster), a killed server loses at most two
/// parts and a chunk, and the file is still finished whole through another.
#[test]
fn with_two_parts_in_flight_a_killed_server_loses_at_most_two() {
    let Some(g) = garage() else { return };
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let prefix = unique("resume2");
    let file = work.path().join("big.bin");
    big(&file, 256 << 20);
    let (done, _, _) = kill_half_way_and_resume(&g, &prefix, work.path(), &file, 2);
    assert_eq!(done["digest"], b3(&file).as_str());
}

/// Server A is killed (SIGKILL) half-way through a 1 GiB upload; `barge send` pointed at server B
/// (same bucket, another garage node) resumes it from what A kept in the bucket, sending again at
/// most one part and one chunk of what A had read (A takes one part at a time). Then both
/// servers list and serve the same tree, and boto3 reads the object and its digest.
#[test]
fn a_killed_servers_upload_is_finished_through_another() {
    let Some(g) = garage() else { return };
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let prefix = unique("resume");
    let file = work.path().join("big.bin");
    let size: u64 = 1 << 30;
    big(&file, size);
    let (done, _, (_b, b_addr)) = kill_half_way_and_resume(&g, &prefix, work.path(), &file, 1);
    let digest = b3(&file);
    assert_eq!(done["digest"], digest.as_str());

    // Another server on the same bucket (A restarted) and B see the same tree.
    let (_a2, a2_addr) = serve_on(&g, &prefix, 2, &work.path().join("a2"));
    let ls = |addr: &str| {
        let out = barge().args(["ls", addr, "-r", "--json"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(ls(&a2_addr), ls(&b_addr));
    assert!(ls(&b_addr).contains(&digest));
    let got = work.path().join("got");
    let out = barge()
        .args(["get", &a2_addr, "big.bin", "-o"])
        .arg(&got)
        .output()
        .unwrap();
    succeeded(&out);
    assert_eq!(b3(&got.join("big.bin")), digest);

    // An S3 client that is not barge reads the object under its name, and its digest.
    let (len, meta, read) = boto3_view(&g, 2, &format!("{prefix}/big.bin"));
    assert_eq!(
        (len, meta.as_str(), read.as_str()),
        (size, digest.as_str(), digest.as_str())
    );
}

/// A garage node is killed (SIGKILL) mid-upload: with three replicas the upload completes, and
/// the object is read back whole from each of the two nodes left.
#[test]
fn a_storage_node_dies_mid_upload_and_nothing_is_lost() {
    let Some(g) = garage() else { return };
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let prefix = unique("node");
    let file = work.path().join("n.bin");
    let size: u64 = 256 << 20;
    big(&file, size);
    let (_s, addr) = serve_on(&g, &prefix, 0, &work.path().join("s"));
    let mut client = barge()
        .arg("send")
        .arg(&file)
        .args(["--to", &addr, "--json", "--retries", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let mut killed = false;
    let mut all = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        all.push_str(&line);
        all.push('\n');
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if !killed && v["event"] == "progress" && v["done"].as_u64().unwrap() >= size / 3 {
            garage_script(&["kill", "3"], &g);
            killed = true;
        }
    }
    let status = client.wait().unwrap();
    garage_script(&["start", "3"], &g);
    assert!(killed, "the upload ended before a third: {all}");
    assert!(status.success(), "{all}");
    let digest = b3(&file);
    assert!(all.contains(&digest), "{all}");
    for node in [0, 1] {
        let (len, meta, read) = boto3_view(&g, node, &format!("{prefix}/n.bin"));
        assert_eq!(
            (len, meta.as_str(), read.as_str()),
            (size, digest.as_str(), digest.as_str()),
            "node {node}"
        );
    }
}

/// What works on a folder works on a bucket: the lesson's format, folders, conflict renames,
/// ranged and resumed downloads, quota, tokens confined to a root, TLS, rm/mv — through the
/// same front ends and core, stored in garage.
#[test]
fn what_works_on_a_folder_works_on_a_bucket() {
    let Some(g) = garage() else { return };
    let _one = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    let work = tempfile::tempdir().unwrap();
    let prefix = unique("same");
    let store = format!("s3://{}/{prefix}", g.bucket);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    // The lesson's format (a server without tokens on loopback accepts it).
    let (_open, open_addr) = serve_on(&g, &prefix, 0, &work.path().join("open"));
    let lesson_file = work.path().join("lesson.txt");
    std::fs::write(&lesson_file, b"the lesson's upload").unwrap();
    let out = barge()
        .args(["send", "--legacy"])
        .arg(&lesson_file)
        .args(["--to", &open_addr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A rename on conflict, and a ranged, resumable download of a multi-part file.
    let other = work.path().join("x").join("lesson.txt");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"another upload, same name").unwrap();
    let out = barge()
        .args(["send", "--legacy"])
        .arg(&other)
        .args(["--to", &open_addr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ls = barge().args(["ls", &open_addr, "--json"]).output().unwrap();
    let listing = text(&ls.stdout);
    assert!(
        listing.contains(r#""path":"lesson.txt""#)
            && listing.contains(r#""path":"lesson (1).txt""#),
        "{listing}"
    );

    // Tokens with a root, TLS and a quota, on the same bucket.
    let tokens = work.path().join("tokens");
    let alice = "aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    std::fs::write(&tokens, format!("{alice} all alice\n")).unwrap();
    let mut cmd = barge();
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--s3-allow-http",
        "--tls",
        "--quota",
        "40M",
    ])
    .args(["--store", &store, "--s3-endpoint", &g.endpoints[1]])
    .arg("--token-file")
    .arg(&tokens)
    .arg("--dir")
    .arg(work.path().join("tls"))
    .stderr(Stdio::null());
    let (_secure, secure_addr) = spawn_announced(cmd);
    let secure_addr = secure_addr.to_string();
    let known = work.path().join("known_hosts");
    let client = |args: &[&str]| {
        barge()
            .env("BARGE_TOKEN", alice)
            .env("BARGE_KNOWN_HOSTS", &known)
            .args(args)
            .args(["--tls"])
            .output()
            .unwrap()
    };
    let file = work.path().join("part.bin");
    big(&file, 20 << 20);
    let out = client(&["send", file.to_str().unwrap(), "--to", &secure_addr]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Stored under the token's root, as the bucket shows it.
    let (len, meta, _) = boto3_view(&g, 2, &format!("{prefix}/alice/part.bin"));
    assert_eq!((len, meta), (20 << 20, b3(&file)));
    // Over the quota: refused (exit 4), nothing stored.
    let too_big = work.path().join("too_big.bin");
    big(&too_big, 30 << 20);
    let out = client(&["send", too_big.to_str().unwrap(), "--to", &secure_addr]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = client(&["ls", &secure_addr, "-r", "--json"]);
    assert!(
        !text(&out.stdout).contains("too_big"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        !text(&out.stdout).contains("lesson"),
        "the root hides the rest: {}",
        text(&out.stdout)
    );
    // A download, through the core's ranged reads, byte-identical.
    let got = work.path().join("got");
    let out = client(&["get", &secure_addr, "part.bin", "-o", got.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(b3(&got.join("part.bin")), b3(&file));
    // mv and rm inside the root.
    let out = client(&["mv", &secure_addr, "part.bin", "kept/part.bin"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = client(&["rm", &secure_addr, "kept", "-r"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = client(&["ls", &secure_addr, "-r", "--json"]);
    assert!(
        !text(&out.stdout).contains("part.bin"),
        "{}",
        text(&out.stdout)
    );
}
