#!/usr/bin/env python3
"""Soak test of a barge server (scripts/soak.sh runs it): mixed uploads, downloads, clients and the
server killed with SIGKILL, a file system near full, a quota, idle connections - for DURATION
seconds on 127.0.0.1 only. At the end every stored and downloaded file is compared with its source,
partials older than the TTL must be gone, and the last server's RSS and open files must be back
near where they started. Prints the figures; exits 1 if any check fails.

Usage: soak.py [SECONDS]   (default 600; BARGE=path overrides target/release/barge)"""
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

BARGE = os.environ.get("BARGE", benchlib.BARGE)
DURATION = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
TTL = 20  # --partial-ttl: abandoned partials must be gone this long after the load stops
QUOTA = 200 << 20
FS_SIZE = 320 << 20  # the store's own small file system: near full most of the time
NAME = re.compile(r"^(s\d+)(?: \(\d+\))?\.bin$")

stats = {k: 0 for k in (
    "sends_ok", "sends_refused", "sends_killed", "sends_failed", "gets_ok", "gets_failed",
    "server_kills", "idle_connections", "bytes_sent")}
lock = threading.Lock()
stop = threading.Event()
problems = []


def count(key, n=1):
    with lock:
        stats[key] += n


def mount_small_fs(root):
    """An ext4 image of FS_SIZE mounted at root/store (falls back to a plain folder)."""
    store = os.path.join(root, "store")
    os.makedirs(store)
    image = os.path.join(root, "fs.img")
    with open(image, "wb") as f:
        f.truncate(FS_SIZE)
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", image, store], check=True, capture_output=True)
        return store, True
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"soak: no small file system ({e}); using a plain folder", file=sys.stderr)
        return store, False


class Server:
    def __init__(self, dir, port, log):
        self.dir, self.port, self.log, self.proc = dir, port, log, None
        self.lock = threading.Lock()

    def start(self):
        with self.lock:
            self.proc = benchlib.start(
                [BARGE, "serve", "--dir", self.dir, "--addr", f"127.0.0.1:{self.port}",
                 "--quota", str(QUOTA), "--partial-ttl", str(TTL), "--header-timeout", "2",
                 "--checkpoint", "4M", "-q"],
                stdout=subprocess.DEVNULL, stderr=self.log)
        benchlib.wait_tcp(self.port)

    def kill(self):
        with self.lock:
            self.proc.kill()
            self.proc.wait()
        count("server_kills")

    def pid(self):
        return self.proc.pid


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def uploader(sources, port, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        src = rng.choice(sources)
        killed = rng.random() < 0.3
        # --on-conflict overwrite: every send moves every byte again (sending an unchanged file
        # is otherwise a no-op, and the soak is about load).
        cmd = [BARGE, "send", src, "--to", f"127.0.0.1:{port}", "-q", "--retries", "2",
               "--timeout", "20", "--on-conflict", "overwrite"]
        if killed:
            cmd += ["--bwlimit", "5M"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if killed:
            time.sleep(rng.uniform(0.3, 2.0))
            if p.poll() is None:
                p.kill()
                p.wait()
                count("sends_killed")
                continue
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = -1
            problems.append(f"send of {src} hung for 120 s")
        if rc == 0:
            count("sends_ok")
            count("bytes_sent", os.path.getsize(src))
        elif rc == 4:
            count("sends_refused")  # quota or space: expected when full
        else:
            count("sends_failed")  # connection lost while the server was being killed


def getter(store, port, out_root, by_name, seed):
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        time.sleep(rng.uniform(0.5, 2.0))
        try:
            names = [f for f in os.listdir(store) if NAME.match(f)]
        except OSError:
            continue
        if not names:
            continue
        name = rng.choice(names)
        out = os.path.join(out_root, f"g{n}")
        n += 1
        r = subprocess.run([BARGE, "get", f"127.0.0.1:{port}", name, "-o", out, "-q",
                            "--retries", "2", "--timeout", "20"],
                           capture_output=True, timeout=180)
        got = os.path.join(out, name)
        if r.returncode == 0:
            if not same(got, by_name[NAME.match(name).group(1)]):
                problems.append(f"downloaded {name} differs from its source")
            count("gets_ok")
        else:
            count("gets_failed")  # removed meanwhile, server killed, ...
        shutil.rmtree(out, ignore_errors=True)


def idler(port):
    """Keeps 50 connections open that never send anything; the server must close them."""
    socks = []
    while not stop.is_set():
        socks = [s for s in socks if s.fileno() >= 0]
        while len(socks) < 50:
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
                count("idle_connections")
            except OSError:
                break
        time.sleep(1)
        for s in list(socks):
            s.setblocking(False)
            try:
                if s.recv(1) == b"":
                    s.close()  # closed by the server, as it should be
            except BlockingIOError:
                pass
            except OSError:
                s.close()
    for s in socks:
        s.close()


def cleaner(store, seed):
    """Deletes stored files now and then so the store keeps filling up again."""
    rng = random.Random(seed)
    while not stop.is_set():
        time.sleep(rng.uniform(5, 15))
        try:
            names = [f for f in os.listdir(store) if NAME.match(f)]
        except OSError:
            continue
        for f in rng.sample(names, len(names) // 2):
            try:
                os.remove(os.path.join(store, f))
            except OSError:
                pass


def same(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def main():
    if not os.path.exists(BARGE):
        sys.exit("build first: cargo build --release")
    root = tempfile.mkdtemp(prefix="barge-soak-")
    mounted = False
    try:
        store, mounted = mount_small_fs(root)
        srcdir = os.path.join(root, "src")
        os.makedirs(srcdir)
        rng = random.Random(1)
        sources, by_name = [], {}
        for k in range(40):
            size = rng.choice([0, 1, 4096, 70_000, 900_000, 3 << 20, 12 << 20, 40 << 20])
            path = os.path.join(srcdir, f"s{k}.bin")
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            sources.append(path)
            by_name[f"s{k}"] = path
        port = benchlib.free_port()
        log = open(os.path.join(root, "serve.log"), "wb")
        server = Server(store, port, log)
        server.start()
        threads = [threading.Thread(target=uploader, args=(sources, port, i)) for i in range(3)]
        threads.append(threading.Thread(target=getter, args=(store, port, os.path.join(root, "get"), by_name, 9)))
        threads.append(threading.Thread(target=idler, args=(port,)))
        threads.append(threading.Thread(target=cleaner, args=(store, 7)))
        for t in threads:
            t.start()
        began = time.monotonic()
        last_phase = max(DURATION - 120, DURATION * 0.6)
        while time.monotonic() - began < last_phase:
            time.sleep(rng.uniform(40, 70))
            if time.monotonic() - began >= last_phase:
                break
            server.kill()
            server.start()
        # The last instance runs the rest of the load: its resources are measured once it is warm
        # (its allocator's pools filled by the same load), then again after the load stops.
        server.kill()
        server.start()
        time.sleep(5)
        rss_cold = rss_kib(server.pid())
        time.sleep(min(55.0, max(0.0, (DURATION - (time.monotonic() - began)) / 2)))
        rss0, fd0 = rss_kib(server.pid()), fds(server.pid())
        while time.monotonic() - began < DURATION:
            time.sleep(1)
        stop.set()
        for t in threads:
            t.join(timeout=300)
        # Load over: idle connections are closed, abandoned partials expire (TTL + one sweep).
        time.sleep(2 * TTL + 5)
        rss1, fd1 = rss_kib(server.pid()), fds(server.pid())
        old = []
        partial_dir = os.path.join(store, ".barge", "partial")
        now = time.time()
        for d, _, files in os.walk(store):
            for f in files:
                p = os.path.join(d, f)
                if (d == partial_dir or f.startswith(".barge-")) and now - os.path.getmtime(p) > TTL + 1:
                    old.append(p)
        benchlib.stop(server.proc)
        verified = 0
        for f in os.listdir(store):
            m = NAME.match(f)
            if m:
                if not same(os.path.join(store, f), by_name[m.group(1)]):
                    problems.append(f"stored {f} differs from its source")
                verified += 1
        if old:
            problems.append(f"{len(old)} partial files older than the TTL remain: {old[:3]}")
        if fd1 > fd0 + 2:
            problems.append(f"open files grew from {fd0} to {fd1}")
        if rss1 > rss0 * 1.1 + 2048:
            problems.append(f"RSS grew from {rss0} KiB (warm) to {rss1} KiB")
        print(f"soak: {DURATION:.0f} s, small file system: {mounted}, quota {QUOTA >> 20} MiB")
        for k, v in stats.items():
            print(f"  {k:18} {v}")
        print(f"  stored files verified against their source: {verified}")
        print(f"  last server: RSS {rss_cold} KiB at 5 s, {rss0} KiB warm, {rss1} KiB after the load;"
              f" open files {fd0} -> {fd1}")
        print(f"  partials older than the TTL left: {len(old)}")
        for p in problems:
            print(f"  PROBLEM: {p}")
        print("soak: " + ("FAILED" if problems else "passed"))
        return 1 if problems else 0
    finally:
        stop.set()
        benchlib.stop_all()
        if mounted:
            subprocess.run(["umount", "-l", os.path.join(root, "store")], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
