#!/usr/bin/env python3
"""The HTTP face against the reference tus server, same run, alternating, medians.

1. A 1 GiB upload with tus-js-client (Node, one PATCH, the same client and chunk size for both) to
   `barge serve --http` and to @tus/server with @tus/file-store. barge runs with --no-fsync,
   as the file store does not fsync either; a durable barge run is reported beside it.
2. The same 1 GiB downloaded with curl from barge's /files/ against `barge get` (no fsync).

With --chunk-size N both servers get the same client uploading in PATCHes of N bytes (where each
server's cost per request shows), instead of one PATCH of the whole file.

Usage: bench_http.py [--size 1G] [--rounds 3] [--chunk-size 8M]
(npm ci in barge/tests/http first; scripts/test.sh does it.)"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BARGE, ROOT, free_port, start, stop, stop_all, wait_tcp  # noqa: E402

PEERS = os.path.join(ROOT, "barge", "tests", "http")


def timed(cmd, **kw):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-size", default=None)
    a = ap.parse_args()
    chunk = [] if a.chunk_size is None else \
        ["--chunk-size", str(int(a.chunk_size[:-1]) << {"K": 10, "M": 20, "G": 30}[a.chunk_size[-1]])]
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1]]
    work = tempfile.mkdtemp(prefix="barge-http-")
    try:
        src = os.path.join(work, "big.bin")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        servers = {}
        for name, extra in (("barge", ["--no-fsync"]), ("barge-durable", [])):
            port, http = free_port(), free_port()
            inbox = os.path.join(work, name)
            servers[name] = (start([BARGE, "-q", "serve", "--dir", inbox, "--addr", "127.0.0.1:%d" % port,
                                    "--http", "127.0.0.1:%d" % http, "--on-conflict", "overwrite"] + extra),
                             "http://127.0.0.1:%d/uploads/" % http, port, http)
            wait_tcp(http)
        tport = free_port()
        tdir = os.path.join(work, "tusd")
        os.makedirs(tdir)
        servers["@tus/server"] = (start(["node", os.path.join(PEERS, "tusd_node.mjs"), tdir, str(tport)], cwd=PEERS),
                                  "http://127.0.0.1:%d/uploads" % tport, None, tport)
        wait_tcp(tport)

        def upload(name):
            return timed(["node", "tus_upload.mjs", servers[name][1], src] + chunk, cwd=PEERS)

        rows = {k: [] for k in ("barge", "@tus/server", "barge-durable", "curl", "barge get")}
        for r in range(a.rounds):
            order = ["barge", "@tus/server", "barge-durable"]
            if r % 2:
                order.reverse()
            for name in order:
                rows[name].append(upload(name))
            _, _, port, http = servers["barge"]
            out = os.path.join(work, "dl")
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)
            pair = [("curl", ["curl", "-sf", "-o", os.path.join(out, "c.bin"), "http://127.0.0.1:%d/files/big.bin" % http]),
                    ("barge get", [BARGE, "-q", "get", "127.0.0.1:%d" % port, "big.bin", "-o", out,
                                   "--on-conflict", "overwrite"])]
            if r % 2:
                pair.reverse()
            for name, cmd in pair:
                rows[name].append(timed(cmd))
        med = {k: statistics.median(v) for k, v in rows.items()}
        mib = size / 2**20
        print("| run | median s | MiB/s |")
        print("|---|---|---|")
        for k in rows:
            print("| %s | %.3f | %.0f |" % (k, med[k], mib / med[k]))
        print("tus upload, barge (no fsync) vs @tus/server: %.2fx the rate" % (med["@tus/server"] / med["barge"]))
        print("tus upload, barge (durable) vs @tus/server: %.2fx the rate" % (med["@tus/server"] / med["barge-durable"]))
        print("download, curl from barge vs barge get: %.2fx the rate" % (med["barge get"] / med["curl"]))
        print("medians of %d rounds, %s, tus chunk size %s; %s"
              % (a.rounds, a.size, a.chunk_size or "whole file", os.uname().release))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
