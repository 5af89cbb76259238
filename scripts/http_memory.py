#!/usr/bin/env python3
"""The HTTP face's memory under load: N tus-js-client uploads of SIZE at once into one
`barge serve --http --no-fsync` (release build); prints the server's peak RSS (VmHWM), the time,
and checks every stored file against the source (size and BLAKE3 via `barge ls --json`).

Usage: http_memory.py [--uploads 20] [--size 1G]
(npm ci in barge/tests/http first; scripts/test.sh does it. Needs N x SIZE of free disk.)"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BARGE, ROOT, free_port, start, stop_all, wait_tcp  # noqa: E402

PEERS = os.path.join(ROOT, "barge", "tests", "http")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uploads", type=int, default=20)
    ap.add_argument("--size", default="1G")
    a = ap.parse_args()
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1]]
    work = tempfile.mkdtemp(prefix="barge-httpmem-")
    try:
        src = os.path.join(work, "big.bin")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        digest = subprocess.run(["b3sum", "--no-names", src], capture_output=True, text=True).stdout.strip() \
            if shutil.which("b3sum") else None
        port, http = free_port(), free_port()
        inbox = os.path.join(work, "inbox")
        server = start([BARGE, "-q", "serve", "--dir", inbox, "--addr", "127.0.0.1:%d" % port,
                        "--http", "127.0.0.1:%d" % http, "--no-fsync", "--max-connections", "256"])
        wait_tcp(http)
        t0 = time.perf_counter()
        clients = [start(["node", "tus_upload.mjs", "http://127.0.0.1:%d/uploads/" % http, src], cwd=PEERS,
                         stdout=subprocess.PIPE, text=True) for _ in range(a.uploads)]
        done = sum('"done":true' in c.communicate()[0] for c in clients)
        took = time.perf_counter() - t0
        with open("/proc/%d/status" % server.pid) as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        listing = subprocess.run([BARGE, "ls", "127.0.0.1:%d" % port, "--json"], capture_output=True, text=True)
        entries = [json.loads(line) for line in listing.stdout.splitlines() if line.strip()]
        files = [e for e in entries if e.get("event") == "entry" and not e.get("dir")]
        # Without b3sum, the server's digests must at least all be the same one.
        digest = digest or (files[0]["digest"] if files else None)
        whole = [e for e in files if e["size"] == size and e["digest"] == digest]
        print("%d tus-js-client uploads of %s at once: %d done, %d stored whole%s, in %.1f s; "
              "server peak RSS %.1f MiB" % (a.uploads, a.size, done, len(whole),
                                             "" if shutil.which("b3sum") else " (one digest for all; no b3sum to check it)", took, hwm / 1024))
        if done != a.uploads or len(whole) != a.uploads:
            raise SystemExit("not every upload was stored whole")
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
