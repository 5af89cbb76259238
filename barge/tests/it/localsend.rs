//! `barge serve --localsend` with a LocalSend client barge did not write (`localsend-cli` from
//! PyPI, installed by `scripts/test.sh`): files of 0 B, 1 B, 10 MiB and 1 GiB and a batch of
//! 100, byte-identical; PINs and tokens; a cancelled session publishes nothing; hostile
//! requests refused; and, across network namespaces, LocalSend's own multicast scan finds barge
//! and a flood of announcements leaves it serving.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::lan::Pair;
use crate::support::*;

/// The LocalSend client, or `None` (said) where it is not installed; under CI it must be.
fn localsend_cli() -> Option<()> {
    let ok = Command::new("localsend-cli")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = "localsend-cli is not installed (scripts/test.sh installs it)";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    }
    Some(())
}

/// `localsend-cli` with its own home (its certificate is made there), verification off as it
/// asks (this machine's CA bundle variables would turn it back on).
fn client(home: &Path) -> Command {
    let mut cmd = Command::new("localsend-cli");
    cmd.env("HOME", home)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE");
    cmd
}

/// A LocalSend receiver on loopback; returns it, its LocalSend port and its folder.
fn serve(extra: &[&str]) -> (ChildGuard, u16, tempfile::TempDir) {
    let (guard, port, _, dir) = serve_both(extra);
    (guard, port, dir)
}

/// [`serve`], also returning the address of barge's own protocol.
fn serve_both(extra: &[&str]) -> (ChildGuard, u16, std::net::SocketAddr, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = barge();
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--localsend",
        "127.0.0.1:0",
        "--no-fsync",
        "--dir",
    ])
    .arg(dir.path().join("inbox"))
    .args(extra)
    .stderr(Stdio::null());
    let (guard, addr, line) = spawn_announced_line(cmd);
    let port = line
        .split("LocalSend on https://")
        .nth(1)
        .and_then(|r| r.split([',', '\n']).next())
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no LocalSend address in {line:?}"))
        .port();
    (guard, port, addr, dir)
}

fn send(home: &Path, port: u16, files: &[PathBuf]) -> (Output, Vec<serde_json::Value>) {
    let out = client(home)
        .args(["send", "127.0.0.1"])
        .args(files)
        .args(["--port", &port.to_string(), "--json"])
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, events)
}

fn write_big(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

fn same(a: &Path, b: &Path) -> bool {
    let out = Command::new("cmp").arg(a).arg(b).output().unwrap();
    out.status.success()
}

fn b3(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

#[test]
fn files_of_every_size_arrive_byte_identical() {
    if localsend_cli().is_none() {
        return;
    }
    let (_server, port, addr, dir) = serve_both(&[]);
    let work = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, len) in [
        ("empty.bin", 0u64),
        ("one.bin", 1),
        ("ten.bin", 10 << 20),
        ("big.bin", 1 << 30),
    ] {
        let p = work.path().join(name);
        write_big(&p, len);
        files.push(p);
    }
    let (out, events) = send(work.path(), port, &files);
    succeeded(&out);
    assert_eq!(
        events.iter().filter(|e| e["event"] == "sent").count(),
        4,
        "{events:?}"
    );
    for f in &files {
        let stored = dir.path().join("inbox").join(f.file_name().unwrap());
        assert!(same(f, &stored), "{} differs", f.display());
    }
    // Verified by the server: the digest it recorded is the file's BLAKE3.
    let out = barge()
        .args(["ls", &addr.to_string(), "big.bin", "--json"])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&b3(&files[3])), "{listed}");
}

#[test]
fn a_batch_of_a_hundred_files_arrives_in_one_session() {
    if localsend_cli().is_none() {
        return;
    }
    let (_server, port, dir) = serve(&[]);
    let work = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = (0..100)
        .map(|i| {
            let p = work.path().join(format!("f{i:03}.txt"));
            std::fs::write(&p, content(i, 1000 + i as usize * 37)).unwrap();
            p
        })
        .collect();
    let (out, events) = send(work.path(), port, &files);
    succeeded(&out);
    assert_eq!(events.iter().filter(|e| e["event"] == "session").count(), 1);
    assert_eq!(events.iter().filter(|e| e["event"] == "sent").count(), 100);
    for (i, f) in files.iter().enumerate() {
        let stored = std::fs::read(dir.path().join("inbox").join(f.file_name().unwrap())).unwrap();
        assert_eq!(stored, content(i as u64, 1000 + i * 37));
    }
}

/// `curl` against the LocalSend API (the client above cannot give a PIN or cancel).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn prepare_body(files: &[(&str, &str, u64)]) -> String {
    let files: serde_json::Map<String, serde_json::Value> = files
        .iter()
        .map(|(id, name, size)| {
            (
                (*id).to_owned(),
                serde_json::json!({"id": id, "fileName": name, "size": size, "fileType": "application/octet-stream"}),
            )
        })
        .collect();
    serde_json::json!({
        "info": {"alias": "test", "version": "2.0", "deviceModel": null, "deviceType": "headless",
                 "fingerprint": "x", "port": 53317, "protocol": "https", "download": false},
        "files": files,
    })
    .to_string()
}

/// The upload URL of file `1` of a `prepare-upload` answer.
fn upload_url(port: u16, answer: &serde_json::Value) -> String {
    format!(
        "{}?sessionId={}&fileId=1&token={}",
        api(port, "upload"),
        answer["sessionId"].as_str().unwrap(),
        answer["files"]["1"].as_str().unwrap()
    )
}

fn api(port: u16, route: &str) -> String {
    format!("https://127.0.0.1:{port}/api/localsend/v2/{route}")
}

#[test]
fn a_pin_or_a_token_decides_who_may_send() {
    if localsend_cli().is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("a.txt");
    std::fs::write(&file, b"hello").unwrap();
    let body = prepare_body(&[("1", "a.txt", 5)]);

    let (_server, port, dir) = serve(&["--localsend-pin", "4321"]);
    // The real client gives no PIN: refused, nothing stored.
    let (out, _) = send(work.path(), port, std::slice::from_ref(&file));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data",
        &body,
        &format!("{}?pin=1234", api(port, "prepare-upload")),
    ]);
    assert_eq!(code, 401, "a wrong PIN");
    let (code, answer) = curl(&[
        "-X",
        "POST",
        "--data",
        &body,
        &format!("{}?pin=4321", api(port, "prepare-upload")),
    ]);
    assert_eq!(code, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let upload = upload_url(port, &answer);
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        "x",
        &upload.replace("token=", "token=x"),
    ]);
    assert_eq!(code, 403, "a wrong file token");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", file.display()),
        &upload,
    ]);
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::read(dir.path().join("inbox/a.txt")).unwrap(),
        b"hello"
    );
    // Five wrong PINs from one address: refused for a while, even with the right one.
    for _ in 0..5 {
        curl(&[
            "-X",
            "POST",
            "--data",
            &body,
            &format!("{}?pin=0000", api(port, "prepare-upload")),
        ]);
    }
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data",
        &body,
        &format!("{}?pin=4321", api(port, "prepare-upload")),
    ]);
    assert_eq!(code, 429);

    // With a token file, the PIN field carries a token with the upload right.
    let tokens = work.path().join("tokens");
    std::fs::write(
        &tokens,
        "up-token-123456789 upload\nro-token-123456789 list,download\n",
    )
    .unwrap();
    let (_server, port, dir) = serve(&["--token-file", tokens.to_str().unwrap()]);
    let (code, _) = curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]);
    assert_eq!(code, 401, "no PIN");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data",
        &body,
        &format!("{}?pin=ro-token-123456789", api(port, "prepare-upload")),
    ]);
    assert_eq!(code, 403, "a token without the upload right");
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data",
        &body,
        &format!("{}?pin=up-token-123456789", api(port, "prepare-upload")),
    ]);
    assert_eq!(code, 200);
    assert!(published(&dir.path().join("inbox")).is_empty());
}

#[test]
fn a_cancelled_session_and_bad_requests_publish_nothing() {
    if localsend_cli().is_none() {
        return;
    }
    let (_server, port, dir) = serve(&[]);
    let inbox = dir.path().join("inbox");
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    write_big(&big, 64 << 20);
    let body = prepare_body(&[("1", "big.bin", 64 << 20)]);
    let (code, answer) = curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]);
    assert_eq!(code, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let sid = answer["sessionId"].as_str().unwrap().to_owned();
    let upload = upload_url(port, &answer);
    // A slow upload, cancelled once bytes are arriving.
    let mut slow = ChildGuard(
        Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "120",
                "--limit-rate",
                "4M",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-X",
                "POST",
            ])
            .arg("--data-binary")
            .arg(format!("@{}", big.display()))
            .arg(&upload)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let partial = dir.path().join("inbox/.barge/partial");
    let receiving = || {
        std::fs::read_dir(&partial)
            .map(|d| {
                d.flatten()
                    .any(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() > 0))
            })
            .unwrap_or(false)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !receiving() {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, _) = curl(&[
        "-X",
        "POST",
        &format!("{}?sessionId={sid}", api(port, "cancel")),
    ]);
    assert_eq!(code, 200);
    let status = slow.0.wait().unwrap();
    let mut code = String::new();
    std::io::Read::read_to_string(slow.0.stdout.as_mut().unwrap(), &mut code).unwrap();
    assert!(
        code != "200" || !status.success(),
        "the cancelled upload succeeded"
    );
    assert!(published(&inbox).is_empty(), "{:?}", published(&inbox));
    let (code, _) = curl(&["-X", "POST", "--data-binary", "x", &upload]);
    assert_eq!(code, 403, "an upload to a cancelled session");

    // Hostile requests: nothing stored, clear statuses.
    for (what, body) in [
        ("malformed JSON", "{\"info\":".to_owned()),
        ("a traversal", prepare_body(&[("1", "../../etc/x", 1)])),
        ("a state folder", prepare_body(&[("1", ".barge/x", 1)])),
        (
            "a negative size",
            prepare_body(&[("1", "n.bin", 1)]).replace("\"size\":1", "\"size\":-1"),
        ),
        ("no file", prepare_body(&[])),
    ] {
        let (code, text) = curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]);
        assert_eq!(code, 400, "{what}: {text}");
    }
    let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(5 << 20));
    let huge_file = work.path().join("huge.json");
    std::fs::write(&huge_file, huge).unwrap();
    let (code, _) = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &format!("@{}", huge_file.display()),
        &api(port, "prepare-upload"),
    ]);
    assert_eq!(code, 413);
    let (code, _) = curl(&["-X", "POST", "--data-binary", "x", &api(port, "upload")]);
    assert_eq!(code, 400, "missing parameters");
    // A body shorter than declared, and one whose SHA-256 is wrong: nothing published.
    let body = prepare_body(&[("1", "short.bin", 10)]);
    let (_, answer) = curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let upload = upload_url(port, &answer);
    let (code, _) = curl(&["-X", "POST", "--data-binary", "12345", &upload]);
    assert_eq!(code, 400);
    let body = prepare_body(&[("1", "hashed.bin", 5)]).replace(
        "\"size\":5",
        &format!("\"size\":5,\"sha256\":\"{}\"", "0".repeat(64)),
    );
    let (_, answer) = curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]);
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let upload = upload_url(port, &answer);
    let (code, text) = curl(&["-X", "POST", "--data-binary", "hello", &upload]);
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("sha256"), "{text}");
    assert!(published(&inbox).is_empty(), "{:?}", published(&inbox));
    // One address cannot hold every session open.
    let body = prepare_body(&[("1", "idle.bin", 1)]);
    let codes: Vec<u16> = (0..5)
        .map(|_| curl(&["-X", "POST", "--data", &body, &api(port, "prepare-upload")]).0)
        .collect();
    assert!(codes.contains(&429), "{codes:?}");
    assert!(
        codes.iter().filter(|c| **c == 200).count() <= 4,
        "{codes:?}"
    );
    // And the server still serves.
    let (code, info) = curl(&[&api(port, "info")]);
    assert_eq!(code, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["deviceType"], "server");
    assert_eq!(info["protocol"], "https");
}

/// In namespaces (LocalSend's multicast group and port are fixed): `localsend-cli scan` finds
/// barge by multicast, the certificate fingerprint is the certificate's SHA-256, and a flood of
/// announcements and garbage on the group leaves it answering and sending.
#[test]
fn localsend_apps_find_barge_by_multicast_and_a_flood_does_not_stop_it() {
    if localsend_cli().is_none() {
        return;
    }
    let Some(pair) = Pair::new() else { return };
    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let inbox = work.path().join("inbox");
    let mut cmd = pair.barge(&pair.a);
    cmd.args([
        "serve",
        "--addr",
        "0.0.0.0:8080",
        "--localsend",
        "--name",
        "barge-in-a",
        "--dir",
    ])
    .arg(&inbox)
    .stderr(Stdio::null());
    let (server, _, line) = spawn_announced_line(cmd);
    let scan_in_b = || {
        let out = pair
            .exec(&pair.b, "localsend-cli")
            .env("HOME", home)
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .args(["scan", "--timeout", "2", "--json"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let found = scan_in_b();
    assert!(found.contains("\"alias\": \"barge-in-a\""), "{found}");
    assert!(found.contains("\"ip\": \"192.168.77.1\""), "{found}");
    // The fingerprint barge gives LocalSend is its certificate's SHA-256.
    let fp = line
        .split("certificate SHA256:")
        .nth(1)
        .unwrap()
        .split([',', '\n'])
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let (code, info) = {
        let out = pair
            .exec(&pair.b, "curl")
            .args([
                "-sk",
                "--max-time",
                "10",
                "https://192.168.77.1:53317/api/localsend/v2/info",
            ])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0));
    assert!(
        info.contains(&format!("\"fingerprint\":\"{fp}\"")),
        "{info} vs {fp}"
    );
    // `register` (the protocol's HTTP answer to an announcement) answers barge's own info.
    let in_b = |args: &[&str]| {
        let out = pair
            .exec(&pair.b, "curl")
            .args(["-sk", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let registered = in_b(&[
        "-X",
        "POST",
        "--data",
        r#"{"alias":"phone","version":"2.0","deviceModel":null,"deviceType":"mobile","fingerprint":"p","port":53317,"protocol":"https","download":false}"#,
        "https://192.168.77.1:53317/api/localsend/v2/register",
    ]);
    assert!(
        registered.contains("\"alias\":\"barge-in-a\"") && registered.ends_with("200"),
        "{registered}"
    );
    // Without a PIN, a sender from outside the receiver's subnets is refused.
    pair.add_foreign_address("10.99.0.2");
    let body = prepare_body(&[("1", "far.bin", 1)]);
    let far = in_b(&[
        "--interface",
        "10.99.0.2",
        "-X",
        "POST",
        "--data",
        &body,
        "https://192.168.77.1:53317/api/localsend/v2/prepare-upload",
    ]);
    assert!(far.ends_with("403"), "{far}");
    let near = in_b(&[
        "-X",
        "POST",
        "--data",
        &body,
        "https://192.168.77.1:53317/api/localsend/v2/prepare-upload",
    ]);
    assert!(near.ends_with("200"), "{near}");

    let flood = r#"
import json, os, socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
hello = json.dumps({"alias": "flood", "version": "2.0", "fingerprint": "f", "port": 53317,
                    "protocol": "https", "announce": True}).encode()
junk = [b"{", b"", os.urandom(3000), b"[1,2]", json.dumps({"alias": "x" * 5000}).encode()]
start = time.time()
for i in range(10000):
    s.sendto(hello, ("224.0.0.167", 53317))
    s.sendto(junk[i % len(junk)], ("224.0.0.167", 53317))
print(time.time() - start)
"#;
    let took = pair.python(&pair.b, flood);
    eprintln!(
        "20,000 datagrams in {} s",
        String::from_utf8_lossy(&took).trim()
    );
    // The flood used up this second's answers; each scan lasts 2 s, so a later one is in a
    // new second.
    let found = (0..3)
        .map(|_| scan_in_b())
        .find(|f| f.contains("barge-in-a"));
    assert!(found.is_some(), "not found after the flood");
    let file = work.path().join("after.bin");
    write_big(&file, 3 << 20);
    let out = pair
        .exec(&pair.b, "localsend-cli")
        .env("HOME", home)
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .arg("send")
        .arg("192.168.77.1")
        .arg(&file)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"event\": \"sent\""),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(same(&file, &inbox.join("after.bin")));
    let hwm_kib = peak_rss_kib(server.0.id());
    assert!(hwm_kib < 64 * 1024, "server peak RSS {hwm_kib} KiB");
}
