#!/usr/bin/env python3
"""Where the CPU goes when one big file crosses loopback: user + system seconds of the sender and
the receiver, and their context switches, for dd, nc and barge (plain, TLS, get), same run,
alternating, medians.

Both ends share this machine's cores, so a transfer can take no less wall time than its total CPU
divided by the cores; the last column is that bound as a ratio against dd's wall time in the same
run (what the best possible spread would give). Usage:

    scripts/cpu_budget.py [--size 1G] [--rounds 3]

Needs nc (netcat-openbsd; scripts/bench.sh installs it) and a release build of barge.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import BARGE, start, stop, stop_all, free_port, random_file, wait_listening

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """User + system seconds and context switches (all threads) of a running process."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    switches = 0
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, task)) as f:
                status = f.read()
        except FileNotFoundError:
            continue
        switches += sum(int(n) for n in re.findall(r"ctxt_switches:\s+(\d+)", status))
    return cpu, switches


def run_child(cmd, stdin=None, stdout=subprocess.DEVNULL):
    """Runs `cmd` to its end: (wall seconds, CPU seconds, context switches)."""
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdin=stdin or subprocess.DEVNULL, stdout=stdout)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit("%s failed (%d)" % (cmd[0], p.returncode))
    return time.monotonic() - t, usage.ru_utime + usage.ru_stime, usage.ru_nvcsw + usage.ru_nivcsw


def warm(path):
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


class Ways:
    def __init__(self, work, src):
        self.work, self.src, self.n = work, src, 0

    def fresh(self):
        self.n += 1
        d = os.path.join(self.work, "dst-%d" % self.n)
        os.makedirs(d)
        return d

    def done(self, d):
        shutil.rmtree(d, ignore_errors=True)
        subprocess.run(["sync"], check=True)

    def dd(self):
        d = self.fresh()
        warm(self.src)
        wall, cpu, sw = run_child(["dd", "if=" + self.src, "of=" + os.path.join(d, "f"), "bs=1M", "status=none"])
        self.done(d)
        return wall, cpu, 0.0, sw, 0

    def nc(self):
        d = self.fresh()
        warm(self.src)
        port = free_port()
        with open(os.path.join(d, "f"), "wb") as out:
            server = start(["nc", "-l", "-N", "127.0.0.1", str(port)], stdout=out)
            wait_listening(port)
            t = time.monotonic()
            with open(self.src, "rb") as f:
                _, cpu, sw = run_child(["nc", "-N", "127.0.0.1", str(port)], stdin=f)
            _, status, usage = os.wait4(server.pid, 0)
            server.returncode = os.waitstatus_to_exitcode(status)
            wall = time.monotonic() - t
        self.done(d)
        return wall, cpu, usage.ru_utime + usage.ru_stime, sw, usage.ru_nvcsw + usage.ru_nivcsw

    def _barge(self, client, server_extra=()):
        d = self.fresh()
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", d, "--no-fsync"]
                       + list(server_extra), stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        addr = re.search(r"listening on (\S+),", line).group(1)
        extra = []
        if "--tls" in server_extra:
            extra = ["--fingerprint", re.search(r"certificate (SHA256:[0-9a-f]+)", line).group(1)]
        try:
            before, sw0 = proc_cpu(server.pid)
            wall, cpu, sw = client(addr, d, extra)
            after, sw1 = proc_cpu(server.pid)
        finally:
            stop(server)
        self.done(d)
        return wall, cpu, after - before, sw, sw1 - sw0

    def barge_send(self, tls=False):
        def client(addr, _d, extra):
            warm(self.src)
            return run_child([BARGE, "-q", "send", self.src, "--to", addr] + extra)
        return self._barge(client, ["--tls"] if tls else [])

    def barge_get(self):
        # The server serves the source's folder; the client writes a fresh one (no fsync).
        folder, name = os.path.split(self.src)
        d = self.fresh()
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", folder, "--no-fsync"],
                       stdout=subprocess.PIPE, text=True)
        addr = re.search(r"listening on (\S+),", server.stdout.readline()).group(1)
        warm(self.src)
        try:
            before, sw0 = proc_cpu(server.pid)
            wall, cpu, sw = run_child([BARGE, "-q", "get", addr, name, "-o", d, "--no-fsync"])
            after, sw1 = proc_cpu(server.pid)
        finally:
            stop(server)
        self.done(d)
        # Sender first: for a get the server sends.
        return wall, after - before, cpu, sw1 - sw0, sw


def parse_size(s):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * units[s[-1].upper()] if s[-1].upper() in units else int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not os.path.exists(BARGE):
        sys.exit("build barge first: cargo build --release -p barge")
    if not shutil.which("nc"):
        sys.exit("nc missing: apt-get install netcat-openbsd")
    size = parse_size(a.size)
    work = tempfile.mkdtemp(prefix="barge-cpu.", dir="/tmp")
    try:
        src = os.path.join(work, "src", "big.bin")
        os.makedirs(os.path.dirname(src))
        random_file(src, size)
        ways = Ways(work, src)
        rows = [
            ("dd bs=1M -> file", ways.dd),
            ("nc -> nc -l > file", ways.nc),
            ("barge send (--no-fsync server)", ways.barge_send),
            ("barge send --tls", lambda: ways.barge_send(tls=True)),
            ("barge get --no-fsync", ways.barge_get),
        ]
        got = {name: [] for name, _ in rows}
        for r in range(a.rounds):
            order = rows if r % 2 == 0 else rows[::-1]
            for name, fn in order:
                got[name].append(fn())
        gib = size / (1 << 30)
        med = {name: [statistics.median(x[i] for x in got[name]) for i in range(5)] for name, _ in rows}
        dd_wall = med["dd bs=1M -> file"][0]
        print("%s, %d rounds, medians; CPU in seconds per GiB" % (a.size, a.rounds))
        print("| transfer | wall s | sender CPU | receiver CPU | total CPU | switches (s/r) | total/2 cores vs dd |")
        print("|---|---|---|---|---|---|---|")
        for name, _ in rows:
            wall, cs, cr, ss, sr = med[name]
            total = (cs + cr) / gib
            bound = "-" if name.startswith("dd") else "%.2f×" % (dd_wall / max(total * gib / 2, 1e-9))
            print("| %s | %.3f | %.2f | %.2f | %.2f | %d / %d | %s |" % (
                name, wall, cs / gib, cr / gib, total, ss, sr, bound))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
