//! The `barge` binary as a user runs it: serve, send, pick, errors and exit codes.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::*;

/// `barge serve` on an ephemeral port; returns the process and the address it printed.
fn spawn_serve(dir: &Path, extra: &[&str]) -> (ChildGuard, SocketAddr) {
    let mut cmd = barge();
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--no-fsync", "--dir"])
        .arg(dir)
        .args(extra)
        .stderr(Stdio::null());
    spawn_announced(cmd)
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run barge")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends SIGTERM to a child we started and waits for its exit status.
fn terminate(guard: &mut ChildGuard) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    guard.0.wait().expect("wait")
}

#[test]
fn serve_and_send_round_trip_then_sigterm_exits_cleanly() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let a = src.path().join("movie.mp4");
    let b = src.path().join("性感荷官在线发牌.,mp4");
    std::fs::write(&a, content(1, 2_500_000)).unwrap();
    std::fs::write(&b, content(2, 10)).unwrap();
    let (mut server, addr) = spawn_serve(inbox.path(), &[]);
    let out = run(barge()
        .arg("-v")
        .arg("send")
        .arg(&a)
        .arg(&b)
        .args(["--to", &addr.to_string()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("sent movie.mp4 (2.38 MiB)"), "{stdout}");
    assert!(
        stdout.contains("sent 性感荷官在线发牌.,mp4 (10 B)"),
        "{stdout}"
    );
    assert!(
        !text(&out.stderr).contains("ETA"),
        "no progress bars when stderr is not a terminal"
    );
    assert_eq!(
        std::fs::read(inbox.path().join("movie.mp4")).unwrap(),
        content(1, 2_500_000)
    );
    assert_eq!(
        std::fs::read(inbox.path().join("性感荷官在线发牌.,mp4")).unwrap(),
        content(2, 10)
    );
    let status = terminate(&mut server);
    assert!(status.success(), "serve exited with {status:?} on SIGTERM");
}

#[test]
fn a_malformed_fingerprint_is_a_usage_error() {
    let port = free_port();
    let out = run(barge().args([
        "ls",
        &format!("127.0.0.1:{port}"),
        "--fingerprint",
        "SHA256:deadbeef",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("deadbeef"));
}

#[test]
fn send_to_unreachable_server_fails_clearly() {
    let src = tempfile::tempdir().unwrap();
    let f = src.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let port = free_port();
    let out = run(barge()
        .arg("send")
        .arg(&f)
        .args(["--to", &format!("127.0.0.1:{port}")]));
    assert_eq!(
        out.status.code(),
        Some(3),
        "unreachable has its own exit code"
    );
    let err = text(&out.stderr);
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");
    assert_eq!(
        err.matches("refused").count(),
        1,
        "cause printed once: {err}"
    );
}

#[test]
fn send_missing_file_fails_before_connecting() {
    let out = run(barge().args(["send", "/nonexistent/file.bin", "--to", "127.0.0.1:9"]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("/nonexistent/file.bin"), "{err}");
    assert!(!err.contains("connect"), "{err}");
}

#[test]
fn legacy_send_reports_a_connection_dropped_by_the_server() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    std::fs::write(&big, content(3, 8 << 20)).unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &["--max-file-size", "1K"]);
    let out = run(barge()
        .args(["send", "--legacy"])
        .arg(&big)
        .args(["--to", &addr.to_string()]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("connection"), "{err}");
    assert_eq!(published(inbox.path()), Vec::<String>::new());
}

#[test]
fn send_reports_the_servers_reason_for_a_refusal() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let big = src.path().join("big.bin");
    std::fs::write(&big, content(3, 3 << 20)).unwrap();
    let small = src.path().join("small.txt");
    std::fs::write(&small, b"fits").unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &["--max-file-size", "1K"]);
    let out = run(barge()
        .arg("send")
        .arg(&big)
        .args(["--to", &addr.to_string()]));
    assert_eq!(out.status.code(), Some(4), "refused has its own exit code");
    let err = text(&out.stderr);
    assert!(err.contains("big.bin not transferred (too_large)"), "{err}");
    assert!(err.contains("over the limit of 1024 bytes"), "{err}");
    // One refused, one stored: a partial transfer.
    let out = run(barge()
        .arg("send")
        .arg(&big)
        .arg(&small)
        .args(["--to", &addr.to_string()]));
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert_eq!(published(inbox.path()), ["small.txt"]);
}

#[test]
fn pick_answers_like_the_lesson_and_uploads_the_choice() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.mp4"), content(1, 1000)).unwrap();
    std::fs::write(src.path().join("b.mp4"), content(2, 2000)).unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let mut child = barge()
        .arg("pick")
        .arg(src.path())
        .args(["--to", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"abc\n7\n2 1\nq\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("1 a.mp4 (1000 B)"), "{stdout}");
    assert!(stdout.contains("2 b.mp4 (1.95 KiB)"), "{stdout}");
    let must = stdout.find("must be a number").expect("must be a number");
    let range = stdout.find("not in range").expect("not in range");
    assert!(must < range);
    assert_eq!(
        std::fs::read(inbox.path().join("b.mp4")).unwrap(),
        content(2, 2000)
    );
    assert_eq!(
        std::fs::read(inbox.path().join("a.mp4")).unwrap(),
        content(1, 1000)
    );
}

#[test]
fn pick_enters_folders_and_comes_back() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("clips/old")).unwrap();
    std::fs::write(src.path().join("top.mp4"), content(1, 10)).unwrap();
    std::fs::write(src.path().join("clips/in.mp4"), content(2, 20)).unwrap();
    std::fs::write(src.path().join("clips/old/x.mp4"), content(3, 30)).unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let mut child = barge()
        .arg("pick")
        .arg(src.path())
        .args(["--to", &addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Enter clips (1), send in.mp4 (2: after the folder old/), go back (0), send top.mp4 (2).
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"1\n2\n0\n2\nq\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("1 clips/") && stdout.contains("1 old/"),
        "{stdout}"
    );
    assert!(stdout.contains("0 ../"), "{stdout}");
    assert_eq!(published(inbox.path()), ["in.mp4", "top.mp4"]);
}

#[test]
fn pick_ends_at_end_of_input() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("only"), b"1").unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let out = run(barge()
        .arg("pick")
        .arg(src.path())
        .args(["--to", &addr.to_string()]));
    // No `q`: the end of input is said, and exits 130 like an interruption.
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("end of input"));
    assert!(published(inbox.path()).is_empty());
}

#[test]
fn serve_refuses_a_planted_state_symlink() {
    let inbox = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), inbox.path().join(".barge")).unwrap();
    let out = run(barge()
        .args(["serve", "--addr", "127.0.0.1:0", "--dir"])
        .arg(inbox.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not a directory"));
}

#[test]
fn accept_errors_back_off_and_the_server_recovers() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::sync::mpsc;

    let inbox = tempfile::tempdir().unwrap();
    // A low descriptor limit makes accept() fail with EMFILE once enough clients are connected.
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:64")
        .arg(env!("CARGO_BIN_EXE_barge"))
        .args(["serve", "--addr", "127.0.0.1:0", "--no-fsync", "--dir"])
        .arg(inbox.path())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    let (mut server, addr) = spawn_announced(cmd);
    let stderr = server.0.stderr.take().unwrap();
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            if log_tx.send(l).is_err() {
                break;
            }
        }
    });

    let idle: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    let saw_accept_error = (|| loop {
        match log_rx.recv_timeout(WAIT) {
            Ok(l) if l.contains("accept failed") => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    })();
    assert!(saw_accept_error, "server never hit the descriptor limit");

    // Queued behind the exhausted server; served once the idle clients leave.
    let uploader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(&lesson_upload("after-emfile", b"recovered"))
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)
    });
    drop(idle);
    uploader
        .join()
        .unwrap()
        .expect("upload served after recovery");
    assert_eq!(
        std::fs::read(inbox.path().join("after-emfile")).unwrap(),
        b"recovered"
    );
    assert!(terminate(&mut server).success());
}

#[test]
fn serve_checks_its_folder_and_port_before_creating_anything() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("f.txt");
    std::fs::write(&file, b"x").unwrap();
    let out = run(barge()
        .args(["serve", "--addr", "127.0.0.1:0", "--dir"])
        .arg(&file));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a folder"),
        "{}",
        text(&out.stderr)
    );

    // A busy port: a hint, and the inbox is not created.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let inbox = d.path().join("inbox");
    let out = run(barge()
        .args(["serve", "--addr", &addr, "--dir"])
        .arg(&inbox));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("another program"),
        "{err}"
    );
    assert!(
        !inbox.exists(),
        "the inbox was created although the port was busy"
    );
}

#[test]
fn every_transfer_command_has_examples_and_there_are_completions_and_a_man_page() {
    let top = text(&run(barge().arg("--help")).stdout);
    assert!(
        top.contains("powers of 1024") && top.contains("100Mbit"),
        "{top}"
    );
    for cmd in [
        "serve",
        "send",
        "get",
        "ls",
        "rm",
        "mv",
        "mkdir",
        "bench",
        "pick",
        "completions",
        "man",
    ] {
        let out = run(barge().args([cmd, "--help"]));
        assert!(out.status.success(), "{cmd}");
        let help = text(&out.stdout);
        assert!(
            help.contains("Examples:\n  barge "),
            "{cmd} --help has no examples:\n{help}"
        );
        // Placeholders are short words a person reads (SECS, SIZE, HOST:PORT), not field names.
        for placeholder in help.split('<').skip(1).filter_map(|p| p.split_once('>')) {
            let word = placeholder.0;
            assert!(
                word.len() <= 10 && !word.contains('_'),
                "{cmd} --help has the placeholder <{word}>"
            );
        }
    }
    for cmd in ["udp send", "udp serve", "echo send", "echo serve"] {
        let out = run(barge().args(cmd.split(' ')).arg("--help"));
        let help = text(&out.stdout);
        for placeholder in help.split('<').skip(1).filter_map(|p| p.split_once('>')) {
            assert!(!placeholder.0.contains('_'), "{cmd}: <{}>", placeholder.0);
        }
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = run(barge().args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(
            script.contains("barge") && script.contains("serve"),
            "{shell}"
        );
    }
    let man = run(barge().arg("man"));
    assert!(man.status.success());
    assert!(text(&man.stdout).contains(".TH barge 1"));
}

/// `send` uses `--to`; `get`, `ls`, `bench` name the server first (or `--from`); options that do
/// nothing for a command are not accepted by it.
#[test]
fn options_are_accepted_only_where_they_act() {
    for args in [
        vec!["ls", "127.0.0.1:9", "--progress", "always"],
        vec!["ls", "127.0.0.1:9", "--bwlimit", "1M"],
        vec!["bench", "127.0.0.1:9", "--bwlimit", "1M"],
        vec!["bench", "127.0.0.1:9", "--progress", "never"],
        vec!["get", "a.txt", "--to", "127.0.0.1:9"],
        vec!["send", "a.txt", "--from", "127.0.0.1:9"],
        vec!["rm", "127.0.0.1:9", "a", "--on-conflict", "skip"],
    ] {
        let out = run(barge().args(&args));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

/// `rm`, `mv` and `mkdir` need the `delete` right (mkdir: upload), stay in the token's root, and
/// a server without tokens refuses rm/mv unless started with --allow-delete.
#[test]
fn remote_management_follows_rights_and_roots() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let tokens = src.path().join("tokens");
    let (all, no_delete, alice) = (
        "aaaaaaaaaaaaaaaaaaaaaaaa",
        "bbbbbbbbbbbbbbbbbbbbbbbb",
        "cccccccccccccccccccccccc",
    );
    std::fs::write(
        &tokens,
        format!("{all} all\n{no_delete} upload,download,list\n{alice} all alice\n"),
    )
    .unwrap();
    let tree = src.path().join("t");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("a.txt"), b"alpha").unwrap();
    std::fs::write(tree.join("sub/b.txt"), b"beta").unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &["--token-file", tokens.to_str().unwrap()]);
    let addr = addr.to_string();
    let as_token = |token: &str, args: &[&str]| run(barge().env("BARGE_TOKEN", token).args(args));
    let sent = as_token(all, &["send", tree.to_str().unwrap(), "--to", &addr]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));

    let refused = as_token(no_delete, &["rm", &addr, "t/a.txt"]);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains("removing and renaming"),
        "{}",
        text(&refused.stderr)
    );
    assert!(inbox.path().join("t/a.txt").exists());

    let made = as_token(no_delete, &["mkdir", &addr, "new/deeper"]);
    assert!(made.status.success(), "{}", text(&made.stderr));
    assert!(inbox.path().join("new/deeper").is_dir());

    let moved = as_token(all, &["mv", &addr, "t/a.txt", "new/a.txt", "--json"]);
    assert!(moved.status.success(), "{}", text(&moved.stderr));
    assert!(
        text(&moved.stdout).contains(r#""event":"moved""#),
        "{}",
        text(&moved.stdout)
    );
    assert_eq!(
        std::fs::read(inbox.path().join("new/a.txt")).unwrap(),
        b"alpha"
    );
    // Never replaces: a second move onto the same name is a conflict.
    std::fs::write(inbox.path().join("t/c.txt"), b"c").unwrap();
    let clash = as_token(all, &["mv", &addr, "t/c.txt", "new/a.txt"]);
    assert_eq!(clash.status.code(), Some(4));
    assert_eq!(
        std::fs::read(inbox.path().join("new/a.txt")).unwrap(),
        b"alpha"
    );

    let not_empty = as_token(all, &["rm", &addr, "t"]);
    assert_eq!(not_empty.status.code(), Some(4));
    assert!(
        text(&not_empty.stderr).contains("not empty"),
        "{}",
        text(&not_empty.stderr)
    );
    // One refused, one done: partial.
    let partly = as_token(all, &["rm", &addr, "t", "-r", "missing"]);
    assert_eq!(partly.status.code(), Some(6), "{}", text(&partly.stderr));
    assert!(!inbox.path().join("t").exists());

    // Confined to alice/: paths outside are not names, and the root itself cannot go.
    std::fs::write(inbox.path().join("keep.txt"), b"keep").unwrap();
    for outside in ["../keep.txt", "/keep.txt/..", ""] {
        let out = as_token(alice, &["rm", &addr, outside, "-r"]);
        assert_ne!(out.status.code(), Some(0), "{outside:?}");
    }
    assert!(inbox.path().join("keep.txt").exists() && inbox.path().join("alice").is_dir());

    // Without tokens: refused unless --allow-delete.
    let open_inbox = tempfile::tempdir().unwrap();
    std::fs::write(open_inbox.path().join("x.txt"), b"x").unwrap();
    let (_open, open_addr) = spawn_serve(open_inbox.path(), &[]);
    let out = run(barge().args(["rm", &open_addr.to_string(), "x.txt"]));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(open_inbox.path().join("x.txt").exists());
    let (_allowing, allowing_addr) = spawn_serve(open_inbox.path(), &["--allow-delete"]);
    let out = run(barge().args(["rm", &allowing_addr.to_string(), "x.txt"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!open_inbox.path().join("x.txt").exists());
}

/// `send - --name N` reads stdin, `get NAME -o -` writes stdout, `--dest` uploads into a folder
/// (and a second send there is incremental).
#[test]
fn pipes_and_dest_folders() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let addr = addr.to_string();
    let data = content(7, 3 << 20);
    let mut child = barge()
        .args(["send", "-", "--name", "piped.bin", "--to", &addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(inbox.path().join("piped.bin")).unwrap(), data);

    let got = run(barge().args(["get", &addr, "piped.bin", "-o", "-"]));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert!(got.stdout == data, "stdout is not the file");
    assert!(text(&got.stderr).is_empty(), "{}", text(&got.stderr));
    let folder = run(barge().args(["get", &addr, "", "-o", "-"]));
    assert_ne!(folder.status.code(), Some(0));

    let no_name = run(barge().args(["send", "-", "--to", &addr]));
    assert_eq!(no_name.status.code(), Some(2), "{}", text(&no_name.stderr));

    let tree = src.path().join("photos");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.jpg"), b"aaa").unwrap();
    for round in 0..2 {
        let out = run(barge().args([
            "send",
            tree.to_str().unwrap(),
            "--to",
            &addr,
            "--dest",
            "2026/dec",
            "--json",
        ]));
        assert!(out.status.success(), "{}", text(&out.stderr));
        let summary = text(&out.stdout);
        let want = if round == 0 {
            r#""files":1"#
        } else {
            r#""unchanged":1"#
        };
        assert!(summary.contains(want), "round {round}: {summary}");
    }
    assert_eq!(
        std::fs::read(inbox.path().join("2026/dec/photos/a.jpg")).unwrap(),
        b"aaa"
    );
}

/// Default output is a summary line; `-q` prints nothing on success; `-v` adds a line per file;
/// with progress on, one overall line counts files.
#[test]
fn output_is_quiet_by_default_and_says_more_when_asked() {
    let src = tempfile::tempdir().unwrap();
    let inbox = tempfile::tempdir().unwrap();
    let tree = src.path().join("t");
    std::fs::create_dir_all(&tree).unwrap();
    for i in 0..3 {
        std::fs::write(tree.join(format!("{i}.txt")), vec![b'x'; 1000 * (i + 1)]).unwrap();
    }
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let addr = addr.to_string();
    let send = |extra: &[&str], dest: &str| {
        let mut cmd = barge();
        cmd.args(extra).args([
            "send",
            tree.to_str().unwrap(),
            "--to",
            &addr,
            "--dest",
            dest,
        ]);
        run(&mut cmd)
    };
    let normal = send(&[], "normal");
    assert!(normal.status.success());
    assert!(text(&normal.stdout).is_empty(), "{}", text(&normal.stdout));
    let stderr = text(&normal.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("3 files sent") && stderr.contains("5.86 KiB moved"),
        "{stderr}"
    );

    let quiet = send(&["-q"], "quiet");
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty() && quiet.stderr.is_empty(),
        "{}",
        text(&quiet.stderr)
    );

    let verbose = send(&["-v"], "verbose");
    let stdout = text(&verbose.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("sent ")).count(),
        3,
        "{stdout}"
    );

    let mut cmd = barge();
    cmd.args([
        "send",
        tree.to_str().unwrap(),
        "--to",
        &addr,
        "--dest",
        "bars",
        "--progress",
        "always",
    ]);
    let bars = run(&mut cmd);
    let stderr = text(&bars.stderr);
    assert!(stderr.contains("3/3 files"), "{stderr}");
}

/// `get --no-fsync` fetches the same verified bytes (it only skips flushing them to disk).
#[test]
fn get_without_fsync_fetches_the_same_bytes() {
    let inbox = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data = content(9, 3 << 20);
    std::fs::write(inbox.path().join("n.bin"), &data).unwrap();
    let (_server, addr) = spawn_serve(inbox.path(), &[]);
    let got = run(barge()
        .args(["get", &addr.to_string(), "n.bin", "--no-fsync", "-o"])
        .arg(out.path()));
    assert!(got.status.success(), "{}", text(&got.stderr));
    assert!(std::fs::read(out.path().join("n.bin")).unwrap() == data);
}
