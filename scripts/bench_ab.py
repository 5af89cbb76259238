#!/usr/bin/env python3
"""Before/after benchmark of two barge binaries in one run: the same transfers through each,
alternating which goes first, medians and the new/old rate ratio per row. For checking that a
change costs nothing (the VM's page-cache speed swings between runs, so only same-run ratios mean
anything: docs/PERFORMANCE.md).

Usage: bench_ab.py OLD_BINARY NEW_BINARY [--size 1G] [--rounds 5] [--files 10000] [--only get]"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import start, stop, stop_all  # noqa: E402


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def served(binary, dst, extra):
    """Starts `binary serve` on a free port into dst; returns (process, address)."""
    p = start([binary, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", dst] + extra,
              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    addr = line.split("listening on ")[1].split(",")[0].strip()
    return p, addr


def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--only", default="", help="run only the rows whose name contains this")
    a = ap.parse_args()
    size = parse_size(a.size)
    work = tempfile.mkdtemp(prefix="barge-ab-")
    try:
        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        tree = os.path.join(work, "small")
        os.makedirs(tree)
        for i in range(a.files):
            with open(os.path.join(tree, f"f{i}"), "wb") as f:
                f.write(os.urandom(4096))
        stored = os.path.join(work, "stored")  # what `get` fetches, served by each binary
        os.makedirs(stored)
        shutil.copy(big, stored)

        def send(binary, src, extra_server):
            dst = tempfile.mkdtemp(dir=work)
            p, addr = served(binary, dst, extra_server)
            try:
                return timed([binary, "-q", "send", src, "--to", addr])
            finally:
                stop(p)
                shutil.rmtree(dst)

        def get(binary):
            p, addr = served(binary, stored, ["--no-fsync"])
            out = tempfile.mkdtemp(dir=work)
            try:
                return timed([binary, "-q", "get", addr, "big.bin", "-o", out])
            finally:
                stop(p)
                shutil.rmtree(out)

        rows = {
            f"send {a.size} (durable)": lambda b: send(b, big, []),
            f"send {a.size} (server --no-fsync)": lambda b: send(b, big, ["--no-fsync"]),
            f"get {a.size}": get,
            f"send {a.files} x 4 KiB": lambda b: send(b, tree, []),
        }
        print(f"{'row':34} {'old s':>8} {'new s':>8} {'new/old rate':>13}")
        for name, fn in rows.items():
            if a.only not in name:
                continue
            times = {a.old: [], a.new: []}
            for r in range(a.rounds):
                order = [a.old, a.new] if r % 2 == 0 else [a.new, a.old]
                for b in order:
                    times[b].append(fn(b))
            old, new = statistics.median(times[a.old]), statistics.median(times[a.new])
            print(f"{name:34} {old:8.3f} {new:8.3f} {old / new:13.2f}", flush=True)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
