#!/usr/bin/env python3
"""barge over a real garage cluster against a standard S3 client putting the same data directly.

A 3-node garage cluster (replication factor 3, `scripts/garage.sh up`, its own ports) and one
`barge serve --store s3://...` on it. Same run, alternating, medians:
1. a 1 GiB file: `barge send` through the server vs `aws s3 cp` straight into the cluster;
2. 10,000 x 4 KiB files: `barge send DIR` vs `aws s3 cp --recursive`;
3. the server's peak RSS while 10 clients each send the 1 GiB file at once (a fresh server).

The aws CLI runs with its defaults (8 MiB parts, 10 requests at once), as a user would run it.
garage stores a block once however often it is written, so every timed run sends new random
bytes (rewritten before it, untimed), never what the other tool sent before it.
Every process started here is stopped by its PID; the cluster is stopped and its data removed.

Usage: scripts/bench_store.py [--size 1G] [--files 10000] [--rounds 3] [--concurrent 10]
       [--port-base 4700]"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BARGE, ROOT, peak_rss_kib, start, stop, stop_all  # noqa: E402


def size_arg(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def garage_env(path):
    env = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"export (\w+)=(.*)", line.strip())
            if m:
                env[m.group(1)] = m.group(2)
    return env


def serve(env, bucket, endpoint, state, extra):
    p = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--store", "s3://%s/barge" % bucket,
               "--s3-endpoint", endpoint, "--s3-allow-http", "--dir", state] + extra,
              stdout=subprocess.PIPE, text=True, env=env)
    addr = re.search(r"listening on (\S+),", p.stdout.readline()).group(1)
    return p, addr


def timed(cmd, env):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def fresh(path):
    """Gives a file, or every file of a tree, new random bytes of the same size (left in the page
    cache, so both clients start from memory)."""
    for root, _, files in os.walk(path) if os.path.isdir(path) else [("", None, [path])]:
        for name in files:
            full = os.path.join(root, name)
            size = os.path.getsize(full)
            with open(full, "r+b") as f:
                for _ in range(0, size, 1 << 20):
                    f.write(os.urandom(min(1 << 20, size - f.tell())))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=size_arg, default=1 << 30)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=10)
    ap.add_argument("--port-base", default="4700")
    ap.add_argument("--serve-args", default="", help="more options for the barge servers")
    args = ap.parse_args()
    if shutil.which("aws") is None:
        raise SystemExit("the aws CLI is needed: pip install awscli")
    if not os.path.exists(BARGE):
        raise SystemExit("build first: cargo build --release (%s)" % BARGE)

    # Stopped by a signal, the cluster is still stopped and its data removed (finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    work = tempfile.mkdtemp(prefix="barge-bench-store.")
    cluster = os.path.join(work, "garage")
    script = os.path.join(ROOT, "scripts", "garage.sh")
    up = dict(os.environ, BARGE_GARAGE_PORT_BASE=args.port_base)
    try:
        subprocess.run(["bash", script, "up", cluster], check=True, env=up, stdout=subprocess.DEVNULL)
        g = garage_env(os.path.join(cluster, "env"))
        env = dict(os.environ, **g)
        bucket = g["BARGE_GARAGE_BUCKET"]
        endpoint = g["BARGE_GARAGE_ENDPOINTS"].split(",")[0]

        big = os.path.join(work, "big.bin")
        with open(big, "wb") as f:
            for _ in range(args.size >> 20):
                f.write(os.urandom(1 << 20))
        small = os.path.join(work, "small")
        os.makedirs(small)
        for i in range(args.files):
            with open(os.path.join(small, "f%05d" % i), "wb") as f:
                f.write(os.urandom(4096))

        server, addr = serve(env, bucket, endpoint, os.path.join(work, "state"), args.serve_args.split())
        aws = ["aws", "--endpoint-url", endpoint, "--only-show-errors", "s3", "cp"]
        runs = {"barge big": [], "aws big": [], "barge small": [], "aws small": []}
        for r in range(args.rounds):
            pairs = [("barge", "aws"), ("aws", "barge")][r % 2]
            for what, path in (("big", big), ("small", small)):
                for tool in pairs:
                    fresh(path)
                    if tool == "barge":
                        cmd = [BARGE, "-q", "send", path, "--to", addr, "--dest", "r%d%s" % (r, what)]
                    elif what == "big":
                        cmd = aws + [path, "s3://%s/aws/r%d/big.bin" % (bucket, r)]
                    else:
                        cmd = aws + ["--recursive", path, "s3://%s/aws/r%d/small/" % (bucket, r)]
                    took = timed(cmd, env)
                    runs["%s %s" % (tool, what)].append(took)
                    print("round %d %-5s %-5s %.3f s" % (r + 1, tool, what, took), flush=True)
        stop(server)

        # Peak RSS of a fresh server while `concurrent` clients send the big file at once (the
        # same bytes: garage keeps them once, which spares its disk and changes nothing here).
        fresh(big)
        server, addr = serve(env, bucket, endpoint, os.path.join(work, "state2"), args.serve_args.split())
        base_kib = peak_rss_kib(server.pid)
        t0 = time.perf_counter()
        clients = [start([BARGE, "-q", "send", big, "--to", addr, "--dest", "c%d" % i], env=env)
                   for i in range(args.concurrent)]
        codes = [c.wait() for c in clients]
        together = time.perf_counter() - t0
        peak_kib = peak_rss_kib(server.pid)
        stop(server)
        if any(codes):
            raise SystemExit("a concurrent send failed: %s" % codes)

        mib = args.size / (1 << 20)
        print("\n%d concurrent sends of %d MiB: %.1f s in all; server peak RSS %.1f MiB (%.1f MiB at start)"
              % (args.concurrent, mib, together, peak_kib / 1024, base_kib / 1024))
        print("target %-20s %s" % ("RSS <= 64 MiB", "met" if peak_kib <= 64 * 1024 else "NOT met"))
        if args.rounds == 0:
            return
        med = {k: statistics.median(v) for k, v in runs.items()}
        print("\n| run | barge s | aws s3 cp s | barge/aws rate |")
        print("|---|---|---|---|")
        print("| %s, 1 file | %.3f (%.0f MiB/s) | %.3f (%.0f MiB/s) | **%.2f** |" % (
            "%d MiB" % mib, med["barge big"], mib / med["barge big"], med["aws big"],
            mib / med["aws big"], med["aws big"] / med["barge big"]))
        print("| %d x 4 KiB | %.3f | %.3f | **%.2f** |" % (
            args.files, med["barge small"], med["aws small"], med["aws small"] / med["barge small"]))
        for name, ok in (("big file >= 0.9x", med["aws big"] / med["barge big"] >= 0.9),
                         ("small files >= 1.0x", med["aws small"] / med["barge small"] >= 1.0)):
            print("target %-20s %s" % (name, "met" if ok else "NOT met"))
    finally:
        stop_all()
        subprocess.run(["bash", script, "down", cluster], env=up, stdout=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
