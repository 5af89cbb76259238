#!/usr/bin/env python3
"""Benchmark of the lesson's UDP and echo services: barge's servers against the lesson's Python
servers, driven by the same load generators in the same run, alternating, medians of N rounds.

Usage: scripts/bench_services.py [--rounds 5] [--udp-count 20000] [--echo-count 3000]
                                 [--lines 20000] [--seed-dir ../shared/seed]

Everything runs on 127.0.0.1 with ephemeral ports; every process started here is stopped by its
PID before the script exits. Prints one table of requests per second and the barge/Python ratio.
"""
import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

from benchlib import BARGE, ROOT, start, stop_all, free_port, wait_tcp


def barge_server(args):
    """Starts a barge server on port 0 and returns its port from the line it prints."""
    p = start([BARGE, "-q"] + args + ["--addr", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not m:
        raise SystemExit("unexpected barge output: %r" % line)
    return int(m.group(1))


def run(cmd, stdin_bytes=None):
    """Runs a load generator; returns (stdout, wall seconds)."""
    t0 = time.monotonic()
    out = subprocess.run(cmd, input=stdin_bytes, capture_output=True, timeout=300)
    secs = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit("%s failed: %s" % (cmd[:3], out.stderr.decode(errors="replace")))
    return out.stdout.decode(errors="replace"), secs


def rate_from(pattern, text):
    m = re.search(pattern, text)
    if not m:
        raise SystemExit("no rate in output: %r" % text[-300:])
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--udp-count", type=int, default=20000)
    ap.add_argument("--echo-count", type=int, default=3000)
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--seed-dir", default=os.path.join(ROOT, "..", "shared", "seed"))
    a = ap.parse_args()
    seed = os.path.abspath(a.seed_dir)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    py = [sys.executable]
    # Servers: the lesson's and barge's, side by side for the whole run.
    seed_udp = free_port(socket.SOCK_DGRAM)
    start(py + [os.path.join(seed, "seed_udp_server.py"), "--port", str(seed_udp), "--quiet",
                "--bufsize", "65536", "--max-seconds", "900"])
    seed_echo = free_port(socket.SOCK_STREAM)
    start(py + [os.path.join(seed, "seed_echo_server.py"), "--port", str(seed_echo), "--quiet",
                "--max-seconds", "900"])
    wait_tcp(seed_echo)
    barge_udp = barge_server(["udp", "serve"])
    barge_echo_lesson = barge_server(["echo", "serve", "--lesson"])
    barge_echo = barge_server(["echo", "serve"])
    lines = b"".join(b"hello %d\n" % i for i in range(a.lines))

    # (row label, unit, {server name: function returning a rate})
    def seed_udp_client(port):
        out, _ = run(py + [os.path.join(seed, "seed_udp_client.py"), "--port", str(port),
                           "--count", str(a.udp_count), "--timeout", "0.5"])
        return rate_from(r"rate=(\d+)", out)

    def barge_udp_send(port):
        out, secs = run([BARGE, "udp", "send", "127.0.0.1:%d" % port, "hello", "--count",
                         str(a.udp_count), "--retries", "0", "--timeout", "500"])
        return rate_from(r"(\d+) replies", out) / secs

    def seed_echo_client(port):
        out, _ = run(py + [os.path.join(seed, "seed_echo_client.py"), "--port", str(port),
                           "--count", str(a.echo_count)])
        if " bad=0 " not in out:
            raise SystemExit("echo replies were wrong: %s" % out)
        return rate_from(r"rate=(\d+)", out)

    def barge_echo_send(port):
        out, secs = run([BARGE, "echo", "send", "127.0.0.1:%d" % port], stdin_bytes=lines)
        if out.count("\n") != a.lines:
            raise SystemExit("expected %d replies" % a.lines)
        return a.lines / secs

    rows = [
        ("udp request/reply", "seed_udp_client.py", "round trips/s",
         lambda: seed_udp_client(seed_udp), lambda: seed_udp_client(barge_udp)),
        ("udp request/reply", "barge udp send", "round trips/s",
         lambda: barge_udp_send(seed_udp), lambda: barge_udp_send(barge_udp)),
        ("echo, 1 connection per request", "seed_echo_client.py", "requests/s",
         lambda: seed_echo_client(seed_echo), lambda: seed_echo_client(barge_echo_lesson)),
        ("echo, one connection", "barge echo send (stdin lines)", "requests/s",
         # The lesson's server answers one message per connection: barge reconnects each time.
         lambda: barge_echo_send(seed_echo), lambda: barge_echo_send(barge_echo)),
    ]
    results = {i: ([], []) for i in range(len(rows))}
    for r in range(a.rounds):
        for i, row in enumerate(rows):
            # Alternate which server goes first, so warm-up and drift hit both alike.
            order = [(0, row[3]), (1, row[4])] if r % 2 == 0 else [(1, row[4]), (0, row[3])]
            for side, fn in order:
                results[i][side].append(fn())
        print("round %d/%d done" % (r + 1, a.rounds), file=sys.stderr, flush=True)

    print()
    print("| service | load generator | unit | lesson's Python server | barge | barge / Python |")
    print("|---|---|---|---|---|---|")
    for i, (service, gen, unit, _, _) in enumerate(rows):
        py_med = statistics.median(results[i][0])
        barge_med = statistics.median(results[i][1])
        print("| %s | %s | %s | %.0f | %.0f | %.2fx |"
              % (service, gen, unit, py_med, barge_med, barge_med / py_med))
    print()
    print("medians of %d rounds; %s; %d cores" % (a.rounds, os.uname().release, os.cpu_count()))


if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
