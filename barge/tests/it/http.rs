//! The HTTP face with clients barge did not write: tus-js-client under Node and tuspy upload
//! (and resume after being killed mid-way), curl downloads ranges; refusals are proper statuses.
//! The clients are installed by `scripts/test.sh` (npm ci in barge/tests/http, pip install tuspy);
//! without them these tests say so and pass on a developer's machine, and fail under CI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// A server with the HTTP face on; returns it, its HTTP base URL and its folder.
fn serve_http(extra: &[&str]) -> (ChildGuard, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = barge();
    cmd.args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--no-fsync",
        "--dir",
    ])
    .arg(dir.path().join("inbox"))
    .args(extra)
    .stderr(Stdio::null());
    let (guard, _, line) = spawn_announced_line(cmd);
    let url = line
        .split("HTTP on ")
        .nth(1)
        .and_then(|r| r.split([',', '\n']).next())
        .unwrap_or_else(|| panic!("no HTTP address in {line:?}"))
        .trim()
        .to_owned();
    (guard, url, dir)
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/http")
}

/// Whether a client is installed; under CI a missing one fails the test.
fn have(what: &str, check: &mut Command) -> bool {
    let ok = check
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipped: {what} is not installed (run scripts/test.sh)");
    }
    ok
}

fn node_client() -> Option<Command> {
    let dir = peers_dir();
    have(
        "tus-js-client (npm ci in barge/tests/http)",
        Command::new("node")
            .current_dir(&dir)
            .args(["-e", "import('tus-js-client')"]),
    )
    .then(|| {
        let mut c = Command::new("node");
        c.current_dir(&dir).arg("tus_upload.mjs");
        c
    })
}

fn python_client() -> Option<Command> {
    have(
        "tuspy (pip install tuspy)",
        Command::new("python3").args(["-c", "import tusclient"]),
    )
    .then(|| {
        let mut c = Command::new("python3");
        c.arg(peers_dir().join("tus_upload.py"));
        c
    })
}

fn json_line(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON from the client: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn pseudo_random(path: &Path, len: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ len;
    let mut left = len;
    while left > 0 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = left.min(8) as usize;
        f.write_all(&x.to_le_bytes()[..n]).unwrap();
        left -= n as u64;
    }
}

fn b3(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

/// Each size uploaded whole; the largest is first killed mid-way (the process exits without any
/// cleanup) and then resumed by a new process from the upload's URL.
fn uploads_and_resumes(client: impl Fn() -> Command, sizes: &[u64]) {
    let (_server, url, dir) = serve_http(&[]);
    let endpoint = format!("{url}/uploads/");
    let inbox = dir.path().join("inbox");
    for (i, &size) in sizes.iter().enumerate() {
        let file = dir.path().join(format!("f{i}-{size}.bin"));
        pseudo_random(&file, size);
        let last = i == sizes.len() - 1;
        let mut resume_from = None;
        if last {
            let out = client()
                .arg(&endpoint)
                .arg(&file)
                .args([
                    "--stop-after",
                    &(size / 2).to_string(),
                    "--chunk-size",
                    &(size / 8).to_string(),
                ])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(3),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v = json_line(&out);
            resume_from = Some(v["url"].as_str().unwrap().to_owned());
            assert!(
                !inbox.join(file.file_name().unwrap()).exists(),
                "stored before the end"
            );
        }
        let mut cmd = client();
        cmd.arg(&endpoint).arg(&file);
        if let Some(u) = &resume_from {
            cmd.args(["--resume", u]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{size}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json_line(&out)["done"], true);
        let stored = inbox.join(file.file_name().unwrap());
        assert_eq!(b3(&stored), b3(&file), "{size} bytes stored byte-identical");
        if let Some(u) = resume_from {
            // The resumed upload continued: the server says where it is, and it is complete.
            let head = curl(&["-sI", "-H", "Tus-Resumable: 1.0.0", &u]);
            assert!(head.contains(&format!("upload-offset: {size}")), "{head}");
        }
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

fn big_sizes() -> Vec<u64> {
    vec![0, 1, 10 << 20, 1 << 30]
}

#[test]
fn tus_js_client_uploads_and_resumes_after_being_killed() {
    if node_client().is_none() {
        return;
    }
    uploads_and_resumes(|| node_client().unwrap(), &big_sizes());
}

#[test]
fn tuspy_uploads_and_resumes_after_being_killed() {
    if python_client().is_none() {
        return;
    }
    uploads_and_resumes(|| python_client().unwrap(), &big_sizes());
}

/// tus-js-client's `parallelUploads` (tus concatenation: pieces uploaded at once, joined by a
/// final upload) and `uploadLengthDeferred` (a stream of unknown length, the length given with
/// the last chunk): stored byte-identical, the pieces gone afterwards; and the refusals around
/// them (a final naming an unfinished or unknown piece, a PATCH to a final upload, a segment
/// without Content-Length).
#[test]
fn tus_concatenation_and_deferred_lengths_with_tus_js_client() {
    if node_client().is_none() {
        return;
    }
    let (_server, url, dir) = serve_http(&[]);
    let endpoint = format!("{url}/uploads/");
    let inbox = dir.path().join("inbox");
    let options = curl(&["-si", "-X", "OPTIONS", &endpoint]);
    assert!(
        options.contains("creation-defer-length") && options.contains("concatenation"),
        "{options}"
    );
    for (i, size) in [0u64, 1, 10 << 20, 100 << 20].into_iter().enumerate() {
        for (mode, args) in [
            ("parallel", vec!["--parallel", "4"]),
            (
                "deferred",
                vec!["--defer-length", "--chunk-size", "3000000"],
            ),
        ] {
            if size == 0 || (mode == "parallel" && size < 4) {
                // tus-js-client cannot split fewer bytes than pieces (it asks for empty ones),
                // and ends an empty stream of deferred length without a request.
                continue;
            }
            let file = dir.path().join(format!("{mode}-{i}.bin"));
            pseudo_random(&file, size);
            let out = node_client()
                .unwrap()
                .arg(&endpoint)
                .arg(&file)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode} {size}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let stored = inbox.join(file.file_name().unwrap());
            assert_eq!(b3(&stored), b3(&file), "{mode} {size}: byte-identical");
            let head = curl(&[
                "-sI",
                "-H",
                "Tus-Resumable: 1.0.0",
                json_line(&out)["url"].as_str().unwrap(),
            ]);
            assert!(head.contains(&format!("upload-offset: {size}")), "{head}");
            if mode == "parallel" {
                assert!(head.contains("upload-concat: final;/uploads/"), "{head}");
            }
        }
    }
    // Only the files are stored; no piece is left, listed or kept.
    let listed = curl(&["-s", &format!("{url}/api/ls?recursive=1")]);
    assert!(!listed.contains("tus-piece"), "{listed}");
    let partial = std::fs::read_dir(inbox.join(".barge/partial"))
        .unwrap()
        .count();
    assert_eq!(partial, 0, "pieces left behind");

    // Refusals.
    let tus = "Tus-Resumable: 1.0.0";
    let create = |extra: &[&str]| {
        let out = curl(
            &[
                &["-si", "-X", "POST", "-H", tus],
                extra,
                &[endpoint.as_str()],
            ]
            .concat(),
        );
        let location = out
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(|l| l.trim().to_owned());
        (out, location)
    };
    let (_, piece) = create(&["-H", "Upload-Concat: partial", "-H", "Upload-Length: 10"]);
    let piece = piece.expect("a partial upload");
    let (out, _) = create(&["-H", &format!("Upload-Concat: final;{piece}")]);
    assert!(
        out.starts_with("http/1.1 400") && out.contains("not complete"),
        "{out}"
    );
    let (out, _) = create(&[
        "-H",
        "Upload-Concat: final;/uploads/0123456789abcdef0123456789abcdef",
    ]);
    assert!(out.starts_with("http/1.1 404"), "{out}");
    let (out, _) = create(&["-H", "Upload-Concat: final;../../etc/passwd"]);
    assert!(out.starts_with("http/1.1 400"), "{out}");
    let (out, _) = create(&["-H", "Upload-Defer-Length: 1", "-H", "Upload-Length: 5"]);
    assert!(out.starts_with("http/1.1 400"), "{out}");
    // A piece done, joined; then a PATCH to the final upload is forbidden.
    let small = dir.path().join("ten.bin");
    std::fs::write(&small, b"0123456789").unwrap();
    let patched = curl(&[
        "-si",
        "-X",
        "PATCH",
        "-H",
        tus,
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        &format!("@{}", small.display()),
        &format!("{url}{piece}"),
    ]);
    assert!(patched.starts_with("http/1.1 204"), "{patched}");
    let (out, fin) = create(&[
        "-H",
        &format!("Upload-Concat: final;{piece}"),
        "-H",
        &format!("Upload-Metadata: filename {}", base64_of(b"joined.txt")),
    ]);
    assert!(out.starts_with("http/1.1 201"), "{out}");
    assert_eq!(
        std::fs::read(inbox.join("joined.txt")).unwrap(),
        b"0123456789"
    );
    let forbidden = curl(&[
        "-si",
        "-X",
        "PATCH",
        "-H",
        tus,
        "-H",
        "Upload-Offset: 10",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        "x",
        &format!("{url}{}", fin.unwrap()),
    ]);
    assert!(forbidden.starts_with("http/1.1 403"), "{forbidden}");
    // A segment of a deferred upload must say its length (chunked bodies cannot).
    let (_, deferred) = create(&["-H", "Upload-Defer-Length: 1"]);
    let chunked = curl(&[
        "-si",
        "-X",
        "PATCH",
        "-H",
        tus,
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "abc",
        &format!("{url}{}", deferred.unwrap()),
    ]);
    assert!(chunked.starts_with("http/1.1 411"), "{chunked}");
}

#[test]
fn curl_downloads_ranges_and_revalidates_by_digest() {
    let (_server, url, dir) = serve_http(&[]);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(inbox.join("docs")).unwrap();
    let file = inbox.join("docs/a.bin");
    pseudo_random(&file, 3 << 20);
    let data = std::fs::read(&file).unwrap();
    let digest = b3(&file);
    let target = format!("{url}/files/docs/a.bin");
    let range = Command::new("curl")
        .args(["-sf", "-r", "1048570-1048585", &target])
        .output()
        .unwrap();
    assert_eq!(range.stdout, &data[1_048_570..=1_048_585]);
    let whole = Command::new("curl")
        .args(["-sf", &target])
        .output()
        .unwrap();
    assert!(whole.stdout == data);
    let head = curl(&["-sI", &target]);
    assert!(head.contains(&format!("etag: \"{digest}\"")), "{head}");
    assert!(head.contains("accept-ranges: bytes") && head.contains("content-length: 3145728"));
    let not_modified = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        &format!("If-None-Match: \"{digest}\""),
        &target,
    ]);
    assert_eq!(not_modified, "304");
    let unsatisfiable = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-r",
        "5000000-",
        &target,
    ]);
    assert_eq!(unsatisfiable, "416");
    let ls = curl(&["-sf", &format!("{url}/api/ls?path=docs&recursive=1")]);
    assert!(
        ls.contains("\"path\":\"a.bin\"") && ls.contains(&digest),
        "{ls}"
    );
    let missing = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{url}/files/nope"),
    ]);
    assert_eq!(missing, "404");
}

/// Refusals are statuses with a short body: 401/403 by token, 413 too large, 409 offset
/// mismatch, 460 checksum mismatch, 410 expired, 412 without Tus-Resumable, 400 bad names.
#[test]
fn tus_refusals_are_proper_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (all, reader) = ("aaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbb");
    std::fs::write(&tokens, format!("{all} all\n{reader} download,list\n")).unwrap();
    let (_server, url, _d) = serve_http(&[
        "--token-file",
        tokens.to_str().unwrap(),
        "--max-file-size",
        "1M",
        "--partial-ttl",
        "0.2",
    ]);
    let uploads = format!("{url}/uploads/");
    let code =
        |args: &[&str]| curl(&[&["-s", "-o", "/dev/null", "-w", "%{http_code}"], args].concat());
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let create = |token: &str, len: &str, name: &str| {
        let meta = format!("Upload-Metadata: filename {}", base64_of(name.as_bytes()));
        code(&[
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &bearer(token),
            "-H",
            &format!("Upload-Length: {len}"),
            "-H",
            &meta,
            &uploads,
        ])
    };
    assert_eq!(
        code(&[
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Length: 5",
            &uploads
        ]),
        "401"
    );
    assert_eq!(create("wrong-token-wrong-token", "5", "a.txt"), "401");
    assert_eq!(create(reader, "5", "a.txt"), "403");
    assert_eq!(create(all, "2000000", "big.bin"), "413");
    assert_eq!(create(all, "5", "../escape.txt"), "400");
    assert_eq!(
        code(&[
            "-X",
            "POST",
            "-H",
            &bearer(all),
            "-H",
            "Upload-Length: 5",
            &uploads
        ]),
        "412"
    );

    // A real upload to refuse PATCHes on.
    let created = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &bearer(all),
            "-H",
            "Upload-Length: 11",
        ])
        .args([
            "-H",
            &format!("Upload-Metadata: filename {}", base64_of(b"c.txt")),
            &uploads,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&created.stdout).to_lowercase();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap_or_else(|| panic!("{text}"))
        .trim()
        .to_owned();
    let upload = format!("{url}{location}");
    let patch = |offset: &str, checksum: Option<&str>, body: &str| {
        let mut args = vec![
            "-X",
            "PATCH",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Content-Type: application/offset+octet-stream",
        ];
        let auth = bearer(all);
        let off = format!("Upload-Offset: {offset}");
        let sum = checksum.map(|c| format!("Upload-Checksum: {c}"));
        args.extend(["-H", &auth, "-H", &off]);
        if let Some(s) = &sum {
            args.extend(["-H", s]);
        }
        args.extend(["--data-binary", body, &upload]);
        code(&args)
    };
    assert_eq!(patch("3", None, "hello world"), "409");
    let wrong = format!("sha1 {}", base64_of(&[0u8; 20]));
    assert_eq!(patch("0", Some(&wrong), "hello world"), "460");
    // sha1("hello world")
    let right = format!(
        "sha1 {}",
        base64_of(&[
            0x2a, 0xae, 0x6c, 0x35, 0xc9, 0x4f, 0xcf, 0xb4, 0x15, 0xdb, 0xe9, 0x5f, 0x40, 0x8b,
            0x9c, 0xe9, 0x1e, 0xe8, 0x46, 0xed
        ])
    );
    assert_eq!(patch("0", Some(&right), "hello world"), "204");

    // An upload left alone past the TTL is gone.
    let created = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &bearer(all),
            "-H",
            "Upload-Length: 11",
            &uploads,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&created.stdout).to_lowercase();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_owned();
    let gone = format!("{url}{location}");
    let mut status = String::new();
    for _ in 0..100 {
        status = code(&[
            "-I",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &bearer(all),
            &gone,
        ]);
        if status != "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(status, "410");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An upload survives a server restart: its description and verified bytes are in the store; the
/// new server answers HEAD with the kept offset and takes the rest.
#[test]
fn a_tus_upload_resumes_across_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    let start = || {
        let mut cmd = barge();
        cmd.args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--dir",
        ])
        .arg(&inbox)
        .stderr(Stdio::null());
        let (guard, _, line) = spawn_announced_line(cmd);
        let url = line.split("HTTP on ").nth(1).unwrap().trim().to_owned();
        (guard, url)
    };
    let file = dir.path().join("r.bin");
    pseudo_random(&file, 5 << 20);
    let data = std::fs::read(&file).unwrap();
    let (mut first, url) = start();
    let created = Command::new("curl")
        .args([
            "-s",
            "-i",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Length: 5242880",
        ])
        .args([
            "-H",
            &format!("Upload-Metadata: filename {}", base64_of(b"r.bin")),
            &format!("{url}/uploads/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&created.stdout).to_lowercase();
    let location = text
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_owned();
    let half = dir.path().join("half");
    std::fs::write(&half, &data[..3 << 20]).unwrap();
    let patched = curl(&[
        "-s",
        "-i",
        "-X",
        "PATCH",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        &format!("@{}", half.display()),
        &format!("{url}{location}"),
    ]);
    assert!(patched.contains("upload-offset: 3145728"), "{patched}");
    first.0.kill().unwrap();
    first.0.wait().unwrap();

    let (_second, url) = start();
    let head = curl(&[
        "-sI",
        "-H",
        "Tus-Resumable: 1.0.0",
        &format!("{url}{location}"),
    ]);
    assert!(head.contains("upload-offset: 3145728"), "{head}");
    let rest = dir.path().join("rest");
    std::fs::write(&rest, &data[3 << 20..]).unwrap();
    let patched = curl(&[
        "-s",
        "-i",
        "-X",
        "PATCH",
        "-H",
        "Tus-Resumable: 1.0.0",
        "-H",
        "Upload-Offset: 3145728",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        &format!("@{}", rest.display()),
        &format!("{url}{location}"),
    ]);
    assert!(patched.contains("upload-offset: 5242880"), "{patched}");
    assert!(
        patched.contains(&format!("barge-digest: {}", b3(&file))),
        "{patched}"
    );
    assert!(std::fs::read(inbox.join("r.bin")).unwrap() == data);
}

/// With --tls the HTTP face is HTTPS with the server's certificate (h2 by ALPN); cleartext h2
/// works by prior knowledge; CORS headers only for the configured origin.
#[test]
fn https_h2_and_cors_only_when_asked() {
    let (_server, url, dir) = serve_http(&["--tls", "--http-cors", "https://app.example.org"]);
    assert!(url.starts_with("https://"), "{url}");
    std::fs::write(dir.path().join("inbox/t.txt"), b"over tls").unwrap();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-w",
            "\n%{http_version}",
            &format!("{url}/files/t.txt"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over tls\n2");
    let cors = curl(&[
        "-skI",
        "-H",
        "Origin: https://app.example.org",
        &format!("{url}/files/t.txt"),
    ]);
    assert!(
        cors.contains("access-control-allow-origin: https://app.example.org"),
        "{cors}"
    );
    let other = curl(&[
        "-skI",
        "-H",
        "Origin: https://evil.example",
        &format!("{url}/files/t.txt"),
    ]);
    assert!(!other.contains("access-control-allow-origin"), "{other}");

    let (_plain, url, dir) = serve_http(&[]);
    std::fs::write(dir.path().join("inbox/p.txt"), b"plain").unwrap();
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-w",
            "\n%{http_version}",
            &format!("{url}/files/p.txt"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "plain\n2");
    let no_cors = curl(&[
        "-sI",
        "-H",
        "Origin: https://app.example.org",
        &format!("{url}/files/p.txt"),
    ]);
    assert!(
        !no_cors.contains("access-control-allow-origin"),
        "{no_cors}"
    );
}

/// The browser page in headless Chromium: a 50 MiB file and a folder uploaded through the file
/// inputs, a page reload mid-upload and the upload finished after it, a refusal shown with the
/// server's reason, a digest shown on demand, a download; screenshots (desktop and phone-sized)
/// in the test's temporary folder.
#[test]
fn the_browser_page_uploads_resumes_after_a_reload_and_downloads() {
    let dir = peers_dir();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let ready = have(
        "chromium (apt install chromium)",
        Command::new(&chromium).arg("--version"),
    ) && have(
        "playwright-core (npm ci in barge/tests/http)",
        Command::new("node")
            .current_dir(&dir)
            .args(["-e", "import('playwright-core')"]),
    );
    if !ready {
        return;
    }
    let (_server, url, work) = serve_http(&["--max-file-size", "150M"]);
    let files = work.path().join("files");
    std::fs::create_dir_all(files.join("folder/sub")).unwrap();
    pseudo_random(&files.join("big.bin"), 50 << 20);
    pseudo_random(&files.join("slow.bin"), 120 << 20);
    std::fs::write(files.join("folder/a.txt"), b"alpha").unwrap();
    pseudo_random(&files.join("folder/sub/b.bin"), 3 << 20);
    std::fs::File::create(files.join("huge.bin"))
        .unwrap()
        .set_len(151 << 20)
        .unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("node")
        .current_dir(&dir)
        .arg("browser_test.mjs")
        .arg(&url)
        .arg(&files)
        .arg(&artifacts)
        .output()
        .unwrap();
    let seen = json_line(&out);
    assert!(
        out.status.success(),
        "{seen} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbox = work.path().join("inbox");
    assert_eq!(seen["big"]["state"], "done", "{seen}");
    assert_eq!(b3(&inbox.join("big.bin")), b3(&files.join("big.bin")));
    for f in ["folder/a.txt", "folder/sub/b.bin"] {
        assert_eq!(b3(&inbox.join(f)), b3(&files.join(f)), "{f}");
    }
    // The reload cut the upload; the second choice of the file resumed it, not restarted it.
    assert_eq!(seen["slow"]["state"], "done", "{seen}");
    let resumed = seen["slow"]["resumedFrom"].as_u64().unwrap();
    assert!(resumed >= 16 << 20, "resumed from {resumed}: {seen}");
    assert_eq!(b3(&inbox.join("slow.bin")), b3(&files.join("slow.bin")));
    // The refusal is shown with the server's reason; nothing stored.
    assert_eq!(seen["huge"]["state"], "failed");
    let refusal = seen["hugeText"].as_str().unwrap();
    assert!(
        refusal.contains("413") && refusal.contains("limit"),
        "{refusal}"
    );
    assert!(!inbox.join("huge.bin").exists());
    assert_eq!(seen["digestShown"], b3(&files.join("big.bin")).as_str());
    assert_eq!(
        b3(&artifacts.join("downloaded.bin")),
        b3(&files.join("big.bin"))
    );
    assert!(seen["phoneOverflow"].as_i64().unwrap() <= 0, "{seen}");
    assert!(artifacts.join("page.png").exists() && artifacts.join("page-phone.png").exists());
}

/// The same page in headless Firefox (Debian's firefox-esr, puppeteer-core over WebDriver BiDi):
/// a file uploaded through the file input, a refusal with the server's reason, the tree with a
/// digest on demand, the download link's bytes, a phone-sized screen.
#[test]
fn the_browser_page_works_in_firefox() {
    let dir = peers_dir();
    let firefox = std::env::var("FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into());
    let ready = have(
        "firefox-esr (apt install firefox-esr)",
        Command::new(&firefox).arg("--version"),
    ) && have(
        "puppeteer-core (npm ci in barge/tests/http)",
        Command::new("node")
            .current_dir(&dir)
            .args(["-e", "import('puppeteer-core')"]),
    );
    if !ready {
        return;
    }
    let (_server, url, work) = serve_http(&["--max-file-size", "150M"]);
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    pseudo_random(&files.join("big.bin"), 20 << 20);
    std::fs::File::create(files.join("huge.bin"))
        .unwrap()
        .set_len(151 << 20)
        .unwrap();
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("firefox");
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("node")
        .current_dir(&dir)
        .arg("firefox_test.mjs")
        .arg(&url)
        .arg(&files)
        .arg(&artifacts)
        .env("FIREFOX", &firefox)
        .output()
        .unwrap();
    let seen = json_line(&out);
    assert!(
        out.status.success(),
        "{seen} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen["userAgent"].as_str().unwrap().contains("Firefox/"),
        "{seen}"
    );
    let inbox = work.path().join("inbox");
    assert_eq!(seen["big"]["state"], "done", "{seen}");
    assert_eq!(b3(&inbox.join("big.bin")), b3(&files.join("big.bin")));
    assert_eq!(seen["huge"]["state"], "failed");
    let refusal = seen["hugeText"].as_str().unwrap();
    assert!(
        refusal.contains("413") && refusal.contains("limit"),
        "{refusal}"
    );
    assert!(!inbox.join("huge.bin").exists());
    assert_eq!(seen["digestShown"], b3(&files.join("big.bin")).as_str());
    let sha = ring::digest::digest(
        &ring::digest::SHA256,
        &std::fs::read(files.join("big.bin")).unwrap(),
    );
    let sha: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(seen["downloadSha256"], sha.as_str(), "the downloaded bytes");
    assert!(seen["phoneOverflow"].as_i64().unwrap() <= 0, "{seen}");
    assert!(artifacts.join("page-phone-firefox.png").exists());
}

fn status_of(args: &[&str]) -> String {
    curl(&[&["-s", "-o", "/dev/null", "-w", "%{http_code}"], args].concat())
}

/// Hostile requests get refusals, never a crash or a stored file: oversized headers, bad
/// offsets and lengths, traversal in metadata and URLs.
#[test]
fn hostile_http_requests_are_refused_and_store_nothing() {
    let (mut server, url, dir) = serve_http(&[]);
    let uploads = format!("{url}/uploads/");
    let tus = "Tus-Resumable: 1.0.0";
    let huge = format!("X-Junk: {}", "a".repeat(100 * 1024));
    let oversized = status_of(&["-H", &huge, &format!("{url}/api/ls")]);
    assert!(oversized == "431" || oversized == "000", "{oversized}");
    for len in ["-5", "18446744073709551616", "1e9", ""] {
        let s = status_of(&[
            "-X",
            "POST",
            "-H",
            tus,
            "-H",
            &format!("Upload-Length: {len}"),
            &uploads,
        ]);
        assert_eq!(s, "400", "Upload-Length {len:?}");
    }
    for name in ["../x", "a/../../x", "..", ".barge/partial/x", "a\\b"] {
        let meta = format!("Upload-Metadata: filename {}", base64_of(name.as_bytes()));
        let s = status_of(&[
            "-X",
            "POST",
            "-H",
            tus,
            "-H",
            "Upload-Length: 3",
            "-H",
            &meta,
            &uploads,
        ]);
        assert_eq!(s, "400", "filename {name:?}");
        let meta = format!(
            "Upload-Metadata: relativePath {}",
            base64_of(name.as_bytes())
        );
        let s = status_of(&[
            "-X",
            "POST",
            "-H",
            tus,
            "-H",
            "Upload-Length: 3",
            "-H",
            &meta,
            &uploads,
        ]);
        assert_eq!(s, "400", "relativePath {name:?}");
    }
    // A real upload, then PATCHes with offsets that are not numbers or are out of range.
    let created = curl(&[
        "-s",
        "-i",
        "-X",
        "POST",
        "-H",
        tus,
        "-H",
        "Upload-Length: 3",
        &uploads,
    ]);
    let location = created
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_owned();
    for offset in ["abc", "-1", "18446744073709551616", "5"] {
        let s = status_of(&[
            "-X",
            "PATCH",
            "-H",
            tus,
            "-H",
            &format!("Upload-Offset: {offset}"),
            "-H",
            "Content-Type: application/offset+octet-stream",
            "--data-binary",
            "abc",
            &format!("{url}{location}"),
        ]);
        assert!(s == "400" || s == "409", "Upload-Offset {offset:?}: {s}");
    }
    // More bytes than declared: refused, nothing published.
    let s = status_of(&[
        "-X",
        "PATCH",
        "-H",
        tus,
        "-H",
        "Upload-Offset: 0",
        "-H",
        "Content-Type: application/offset+octet-stream",
        "--data-binary",
        "abcdef",
        &format!("{url}{location}"),
    ]);
    assert_eq!(s, "400");
    for path in [
        "/files/..%2f..%2fetc%2fpasswd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/.barge/notes",
        "/uploads/..%2f..%2fx",
    ] {
        let s = status_of(&["--path-as-is", "-H", tus, &format!("{url}{path}")]);
        assert!(["400", "404"].contains(&s.as_str()), "{path}: {s}");
    }
    assert!(
        published(&dir.path().join("inbox")).is_empty(),
        "nothing stored"
    );
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server is still running"
    );
}

/// Slow clients are cut off at the header timeout; 1,000 idle connections neither stop the server
/// nor keep a real client out for long, and its memory stays bounded.
#[test]
fn slow_and_idle_clients_do_not_hold_the_server() {
    use std::io::{Read, Write};
    barge::net::raise_open_file_limit();
    let (server, url, dir) = serve_http(&["--header-timeout", "1", "--max-connections", "256"]);
    std::fs::write(dir.path().join("inbox/ok.txt"), b"ok").unwrap();
    let addr = url.trim_start_matches("http://").to_owned();
    // A slow-loris client: half a request line, then nothing. The server closes it.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /files/ok.txt HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    // A thousand connections that never say a word.
    let idle: Vec<_> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 900, "{} connected", idle.len());
    let got = curl(&["-s", "--max-time", "60", &format!("{url}/files/ok.txt")]);
    assert_eq!(got, "ok");
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", server.0.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        rss_kib < 128 * 1024,
        "server RSS {rss_kib} KiB with 1,000 idle connections"
    );
    drop(idle);
}
