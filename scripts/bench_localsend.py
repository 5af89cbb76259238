#!/usr/bin/env python3
"""LocalSend throughput and barge's discovery latency, same run, alternating, medians.

1. A 1 GiB file sent by the same LocalSend client (localsend-cli from PyPI) to `barge serve
   --localsend` and to another LocalSend receiver from a package registry (localsend-cli's own
   `receive`), alternating. localsend-cli's receiver keeps the body in memory and does not fsync,
   so barge runs with --no-fsync; a durable barge run is reported beside it.
2. Discovery latency: the first answer after `barge discover` starts (its age_ms), 20 times.

Both receivers use LocalSend's fixed port and multicast group, so everything runs inside a network
namespace this script makes (root) and deletes: loopback only, nothing reaches another host.

Usage: sudo bench_localsend.py [--size 1G] [--rounds 3]"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BARGE, start, stop_all, wait_tcp  # noqa: E402

CLIENT_ENV = {k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}


def send(port, path, home):
    """Seconds localsend-cli takes to send `path` to 127.0.0.1:port (it must report it sent)."""
    t0 = time.perf_counter()
    out = subprocess.run(["localsend-cli", "send", "127.0.0.1", path, "--port", str(port), "--json"],
                         check=True, capture_output=True, text=True, env=dict(CLIENT_ENV, HOME=home))
    took = time.perf_counter() - t0
    if '"event": "sent"' not in out.stdout:
        raise SystemExit("not sent: %s" % out.stdout)
    return took


def inside(a):
    size = int(a.size[:-1]) << {"M": 20, "G": 30}[a.size[-1]]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work = tempfile.mkdtemp(prefix="barge-localsend-")
    try:
        src = os.path.join(work, "big.bin")
        with open(src, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        home = os.path.join(work, "home")
        os.makedirs(home)
        receivers = {}
        for name, port, extra in (("barge", 53318, ["--no-fsync"]), ("barge-durable", 53319, [])):
            inbox = os.path.join(work, name)
            start([BARGE, "-q", "serve", "--dir", inbox, "--addr", "127.0.0.1:0", "--on-conflict", "overwrite",
                   "--localsend", "127.0.0.1:%d" % port] + extra)
            wait_tcp(port)
            receivers[name] = (port, inbox)
        other = os.path.join(work, "localsend-cli")
        os.makedirs(other)
        start(["localsend-cli", "receive", "--output", other, "--json"], stdout=subprocess.DEVNULL,
              env=dict(CLIENT_ENV, HOME=os.path.join(work, "home2")))
        wait_tcp(53317, deadline=30)
        receivers["localsend-cli receive"] = (53317, other)
        times = {n: [] for n in receivers}
        for _ in range(a.rounds):
            for name, (port, inbox) in receivers.items():
                times[name].append(send(port, src, home))
                os.remove(os.path.join(inbox, "big.bin"))
        med = {n: statistics.median(t) for n, t in times.items()}
        mib = size / (1 << 20)
        print("LocalSend, %s sent by localsend-cli, medians of %d (alternating):" % (a.size, a.rounds))
        for n, t in med.items():
            print("  %-22s %6.2f s  %7.1f MiB/s   %s" % (n, t, mib / t, " ".join("%.2f" % x for x in times[n])))
        ref = med["localsend-cli receive"]
        print("  ratio barge/localsend-cli receive (rate): %.2f (durable %.2f)"
              % (ref / med["barge"], ref / med["barge-durable"]))

        # Discovery latency, on this namespace's loopback (no other host in it).
        beacon_dir = os.path.join(work, "beacon")
        # A veth pair with both ends here: an interface that carries multicast, inside the namespace.
        subprocess.run(["ip", "link", "add", "bgv0", "type", "veth", "peer", "name", "bgv1"], check=True)
        subprocess.run(["ip", "addr", "add", "192.168.79.1/24", "dev", "bgv0"], check=True)
        for dev in ("bgv0", "bgv1"):
            subprocess.run(["ip", "link", "set", dev, "up", "multicast", "on"], check=True)
        subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "bgv0"], check=True)
        start([BARGE, "-q", "serve", "--dir", beacon_dir, "--addr", "0.0.0.0:8080", "--announce", "--name", "bench"])
        wait_tcp(8080)
        ages = []
        for _ in range(20):
            out = subprocess.run([BARGE, "discover", "--name", "bench", "--json"], capture_output=True, text=True)
            ages.append(json.loads(out.stdout.splitlines()[0])["age_ms"])
            time.sleep(0.2)  # pacing, not synchronisation: stays under the per-address answer limit
        print("discovery: first answer after `discover` starts: median %.3f ms, max %.3f ms (20 runs)"
              % (statistics.median(ages), max(ages)))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        return inside(a)
    ns = "bgbench%d" % os.getpid()
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), "--inside",
                        "--size", a.size, "--rounds", str(a.rounds)], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    main()
