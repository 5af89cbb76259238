#!/usr/bin/env python3
"""Incremental sync benchmark: barge against an rsync daemon on the same changes, same run,
alternating, medians.

1. A 1 GiB file with 3 changed 1 MiB regions, sent again over a copy of the old version: bytes
   re-sent (barge's own count; rsync's --stats "Total bytes sent") and time, and a full send.
2. A 10,000-file tree (4 KiB each) with 10 files changed, sent again: time of the second send;
   then the same tree sent again with nothing changed.

Usage: bench_sync.py [--size 1G] [--files 10000] [--rounds 3]   (needs rsync; scripts/bench.sh installs it)"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BARGE, free_port, start, stop, stop_all, wait_tcp  # noqa: E402


def timed(cmd, **kw):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.perf_counter() - t0, out.stdout


def change(path, offsets):
    with open(path, "r+b") as f:
        for at in offsets:
            f.seek(at)
            f.write(os.urandom(4096))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1]]
    work = tempfile.mkdtemp(prefix="barge-sync-")
    try:
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        tree = os.path.join(work, "tree")
        os.makedirs(tree)
        for i in range(a.files):
            with open(os.path.join(tree, "f%05d" % i), "wb") as f:
                f.write(os.urandom(4096))
        barge_dir = os.path.join(work, "barge-dst")
        rsync_dir = os.path.join(work, "rsync-dst")
        os.makedirs(barge_dir)
        os.makedirs(rsync_dir)
        port = free_port()
        conf = os.path.join(work, "rsyncd.conf")
        with open(conf, "w") as c:
            c.write("use chroot = no\nuid = %d\ngid = %d\n[sync]\npath = %s\nread only = no\n"
                    % (os.getuid(), os.getgid(), rsync_dir))
        start(["rsync", "--daemon", "--no-detach", "--address=127.0.0.1", "--port=%d" % port, "--config=%s" % conf])
        wait_tcp(port)
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", barge_dir],
                       stdout=subprocess.PIPE, text=True)
        addr = re.search(r"listening on (\S+),", server.stdout.readline()).group(1)

        def barge(src, *extra):
            secs, out = timed([BARGE, "-q", "send", src, "--to", addr, "--json"] + list(extra))
            summary = json.loads(out.strip().splitlines()[-1])
            return secs, summary["transferred"]

        def rsync(src):
            secs, out = timed(["rsync", "-a", "--stats", src, "rsync://127.0.0.1:%d/sync/" % port])
            sent = int(re.search(r"Total bytes sent: ([\d,]+)", out).group(1).replace(",", ""))
            return secs, sent

        rows = {"full": {"barge": [], "rsync": []}, "delta": {"barge": [], "rsync": []},
                "tree": {"barge": [], "rsync": []}, "same": {"barge": [], "rsync": []}}
        sent = {"barge": 0, "rsync": 0}
        barge(big)
        rsync(big)
        barge(tree)
        rsync(tree)
        for r in range(a.rounds):
            order = ["barge", "rsync"] if r % 2 == 0 else ["rsync", "barge"]
            # Three changed 1 MiB regions (4 KiB written at the start of each).
            change(big, [(size // 4) * k + 12345 for k in (1, 2, 3)])
            for tool in order:
                secs, moved = barge(big) if tool == "barge" else rsync(big)
                rows["delta"][tool].append(secs)
                sent[tool] = moved
            for tool in order:
                secs, _ = barge(big, "--on-conflict", "overwrite") if tool == "barge" else \
                    timed(["rsync", "-a", "-I", "--whole-file", big, "rsync://127.0.0.1:%d/sync/" % port])
                rows["full"][tool].append(secs)
            for k in range(10):
                change(os.path.join(tree, "f%05d" % (k * (a.files // 10))), [0])
            for tool in order:
                secs, _ = barge(tree) if tool == "barge" else rsync(tree)
                rows["tree"][tool].append(secs)
            for tool in order:
                secs, _ = barge(tree) if tool == "barge" else rsync(tree)
                rows["same"][tool].append(secs)
        med = {row: {t: statistics.median(v) for t, v in tools.items()} for row, tools in rows.items()}
        print("| run | barge s | rsync s | barge/rsync time |")
        print("|---|---|---|---|")
        labels = {"full": "%s, everything again" % a.size,
                  "delta": "%s, 3 changed 1 MiB regions" % a.size,
                  "tree": "%d x 4 KiB, 10 changed" % a.files,
                  "same": "%d x 4 KiB, nothing changed" % a.files}
        for row in ("full", "delta", "tree", "same"):
            print("| %s | %.3f | %.3f | %.2f |" % (labels[row], med[row]["barge"], med[row]["rsync"],
                                                  med[row]["barge"] / med[row]["rsync"]))
        print("bytes re-sent for the 3 changed regions: barge %d (%.2f MiB), rsync %d (%.2f MiB)"
              % (sent["barge"], sent["barge"] / 2**20, sent["rsync"], sent["rsync"] / 2**20))
        print("medians of %d rounds; %s" % (a.rounds, os.uname().release))
        stop(server)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
