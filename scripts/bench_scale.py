#!/usr/bin/env python3
"""Scale checks for one barge server: N concurrent connections held open at once (each then
finishes a small upload), and M concurrent uploads of a large file; prints the server's peak RSS.

Usage: scripts/bench_scale.py [--connections 2000] [--uploads 100] [--upload-size 100M]

Loopback only, ephemeral ports; every process started here is stopped by its PID and every file
made here is removed.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from benchlib import BARGE, ROOT, peak_rss_kib, random_file, stop


def serve(dir_, extra):
    p = subprocess.Popen([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--no-fsync", "--dir", dir_] + extra,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    addr = re.search(r"listening on (\S+),", p.stdout.readline()).group(1)
    host, port = addr.rsplit(":", 1)
    return p, (host, int(port))


def lesson_upload(name, body):
    header = json.dumps({"file_name": name, "file_size": len(body)}).encode()
    return struct.pack("<i", len(header)) + header + body


def connections(work, n):
    dir_ = os.path.join(work, "conns")
    server, addr = serve(dir_, ["--max-connections", str(n + 100)])
    try:
        t0 = time.monotonic()
        socks = []
        for i in range(n):
            s = socket.create_connection(addr, timeout=30)
            wire = lesson_upload("c%05d" % i, b"x" * 1000)
            s.sendall(wire[:500])  # every connection is mid-upload at the same time
            socks.append((s, wire))
        held = time.monotonic() - t0
        for s, wire in socks:
            s.sendall(wire[500:])
            s.shutdown(socket.SHUT_WR)
        for s, _ in socks:
            while s.recv(4096):
                pass
            s.close()
        stored = len([f for f in os.listdir(dir_) if f.startswith("c")])
        print("%d connections open at once (opened in %.2fs): %d uploads stored, server peak RSS %.1f MiB"
              % (n, held, stored, peak_rss_kib(server.pid) / 1024))
        return stored == n
    finally:
        stop(server)


def uploads(work, m, size):
    src = os.path.join(work, "big.bin")
    random_file(src, size)
    dir_ = os.path.join(work, "uploads")
    server, addr = serve(dir_, [])
    try:
        t0 = time.monotonic()
        clients = []
        for i in range(m):
            link = os.path.join(work, "u%03d.bin" % i)
            os.link(src, link)
            clients.append(subprocess.Popen([BARGE, "-q", "send", link, "--to", "%s:%d" % addr],
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        failed = sum(1 for c in clients if c.wait(timeout=900) != 0)
        secs = time.monotonic() - t0
        stored = len([f for f in os.listdir(dir_) if f.startswith("u")])
        print("%d concurrent uploads of %d MiB: %d stored, %d failed, %.1fs, server peak RSS %.1f MiB"
              % (m, size >> 20, stored, failed, secs, peak_rss_kib(server.pid) / 1024))
        return failed == 0
    finally:
        stop(server)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--upload-size", default="100M")
    a = ap.parse_args()
    size = int(a.upload_size[:-1]) << {"K": 10, "M": 20, "G": 30}[a.upload_size[-1].upper()]
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="barge-scale-")
    try:
        ok = connections(work, a.connections) and uploads(work, a.uploads, size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
