#!/usr/bin/env python3
"""Transfer benchmark: barge against dd (the ceiling), nc, an rsync daemon and the lesson's Python
pair, on the same files in the same run, alternating, medians of N rounds, with ratios.

Every run writes a fresh copy into a fresh folder on the same file system and is timed until the
receiver has it under its final name. A `sync` precedes each timed run so no run pays for the
previous run's dirty pages. Loopback only, ephemeral ports; every process started here is stopped
by its PID and every file made here is removed.

With --stable (root), this VM's free-page reporting is paused for the run and the memory the
runs will write into is touched once first, so page-cache writes no longer pay the host's page
faults: figures compare across days, not only within a run (docs/PERFORMANCE.md).

Usage: scripts/bench_transfer.py [--size 1G] [--rounds 5] [--files 10000] [--work DIR] [--stable]
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import BARGE, ROOT, start, stop, stop_all, free_port, random_file, wait_tcp, wait_listening


def parse_size(s):
    m = re.fullmatch(r"(\d+)([KMG]?)", s.upper())
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2)]


REPORTING = "/sys/module/page_reporting/parameters/page_reporting_order"


class Stable:
    """Pauses free-page reporting (an order no free block reaches) and touches `touch` bytes of
    memory through tmpfs, then gives the memory back to the guest's free lists, still backed by
    the host. Restores the reporting order on exit."""

    def __init__(self, touch):
        self.touch = touch
        self.saved = None

    def __enter__(self):
        try:
            with open(REPORTING) as f:
                self.saved = f.read().strip()
            with open(REPORTING, "w") as f:
                f.write("11")
        except OSError as e:
            raise SystemExit("--stable needs root and %s: %s" % (REPORTING, e))
        fill = tempfile.NamedTemporaryFile(dir="/dev/shm", prefix="barge-prefault-")
        with fill:
            block = b"\1" * (16 << 20)
            for _ in range(self.touch // len(block)):
                fill.write(block)
            fill.flush()
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            with open(REPORTING, "w") as f:
                f.write(self.saved)


def timed(fn):
    subprocess.run(["sync"], check=True)
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def run(cmd):
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(cmd[:3]), out.stderr.decode(errors="replace")[-500:]))


def warm(path):
    """Reads `path` (a file or a folder) into the page cache, untimed: this VM gives freed memory
    back to its host, so a file read a minute ago may come from disk now."""
    if os.path.isdir(path):
        subprocess.run("find %s -type f -exec cat {} + > /dev/null" % shlex.quote(path), shell=True, check=True)
    else:
        subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


class Bench:
    def __init__(self, work, seed):
        self.work = work
        self.seed = seed
        self.n = 0

    def fresh(self):
        self.n += 1
        d = os.path.join(self.work, "dst-%d" % self.n)
        os.makedirs(d)
        return d

    # Each method moves `src` (a file or a folder) into a fresh folder and returns seconds.
    def dd(self, src, extra=()):
        dst = self.fresh()
        warm(src)
        return timed(lambda: run(["dd", "if=" + src, "of=" + os.path.join(dst, "f"), "bs=1M", "status=none"]
                                 + list(extra)))

    def nc_pair(self, src):
        dst = self.fresh()
        warm(src)
        port = free_port()
        with open(os.path.join(dst, "f"), "wb") as out:
            server = start(["nc", "-l", "-N", "127.0.0.1", str(port)], stdout=out)
            wait_listening(port)

            def go():
                with open(src, "rb") as f:
                    subprocess.run(["nc", "-N", "127.0.0.1", str(port)], stdin=f, check=True)
                server.wait(timeout=600)

            return timed(go)

    def rsync(self, src, port):
        dst = os.path.join(self.work, "rsync-module")
        for name in os.listdir(dst):
            p = os.path.join(dst, name)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        warm(src)
        args = ["rsync", "--whole-file", "-a" if os.path.isdir(src) else "-t", src, "rsync://127.0.0.1:%d/bench/" % port]
        return timed(lambda: run(args))

    def lesson(self, src):
        dst = self.fresh()
        warm(src)
        port = free_port()
        server = start([sys.executable, os.path.join(self.seed, "seed_server.py"), dst, "--port", str(port),
                        "--max-conns", "1", "--quiet"])
        wait_listening(port)

        def go():
            run([sys.executable, os.path.join(self.seed, "seed_client.py"), src, "--port", str(port)])
            server.wait(timeout=600)

        return timed(go)

    def barge_send(self, src, extra_client, extra_server):
        dst = self.fresh()
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", dst] + extra_server,
                       stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        addr = re.search(r"listening on (\S+),", line).group(1)
        warm(src)
        if "--tls" in extra_server:
            # Pinned, as a careful user would: no trust-on-first-use file touched.
            extra_client = extra_client + ["--fingerprint", re.search(r"certificate (SHA256:[0-9a-f]+)", line).group(1)]
        try:
            return timed(lambda: run([BARGE, "-q", "send", src, "--to", addr] + extra_client))
        finally:
            stop(server)

    def iperf3(self, size):
        """Memory to memory, 1 MiB writes: what the loopback link carries (seconds from the
        receiver's own report, so process start-up is not counted)."""
        port = free_port()
        server = start(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL)
        wait_listening(port)
        try:
            out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-l", "1M", "-n", str(size), "-J"],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=600, check=True)
            return size * 8 / json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        finally:
            stop(server)

    def barge_bench(self, size):
        """barge's framing memory to memory (no disk, no hashing), from its own report."""
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", self.fresh()],
                       stdout=subprocess.PIPE, text=True)
        addr = re.search(r"listening on (\S+),", server.stdout.readline()).group(1)
        try:
            out = subprocess.run([BARGE, "-q", "bench", addr, "--size", str(size), "--json"],
                                 stdin=subprocess.DEVNULL, capture_output=True, timeout=600, check=True)
            return json.loads(out.stdout)["secs"]
        finally:
            stop(server)

    def barge_get(self, name, server_dir, extra_client=()):
        server = start([BARGE, "-q", "serve", "--addr", "127.0.0.1:0", "--dir", server_dir, "--no-fsync"],
                       stdout=subprocess.PIPE, text=True)
        addr = re.search(r"listening on (\S+),", server.stdout.readline()).group(1)
        dst = self.fresh()
        warm(os.path.join(server_dir, name))
        try:
            return timed(lambda: run([BARGE, "-q", "get", addr, name, "-o", dst] + list(extra_client)))
        finally:
            stop(server)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--work", default=None, help="folder for the files (default: a temp folder in /tmp)")
    ap.add_argument("--seed-dir", default=os.path.join(ROOT, "..", "shared", "seed"))
    ap.add_argument("--file-size", default="4K", help="size of each small file")
    ap.add_argument("--small-only", action="store_true",
                    help="only the small-file rows (rsync and barge), e.g. --files 100000 --file-size 1K")
    ap.add_argument("--stable", action="store_true",
                    help="pause free-page reporting and pre-fault memory (root; see the docstring)")
    ap.add_argument("--stream-limit", default="16M",
                    help="per-connection limit L of the --streams rows (bytes/s)")
    a = ap.parse_args()
    if a.stable:
        with Stable(min(8 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES") // 2)):
            return run_all(a)
    return run_all(a)


def run_all(a):
    size = 1 << 20 if a.small_only else parse_size(a.size)
    file_size = parse_size(a.file_size)
    small_rsync_row = "rsync daemon push, %d x %s" % (a.files, a.file_size)
    small_barge_row = "barge send, %d x %s (--no-fsync)" % (a.files, a.file_size)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="barge-bench-", dir=a.work)
    b = Bench(work, os.path.abspath(a.seed_dir))
    try:
        src = os.path.join(work, "src.bin")
        random_file(src, size)
        tree = os.path.join(work, "tree")
        for i in range(a.files):
            d = os.path.join(tree, "d%02d" % (i % 20))
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, "f%05d" % i), "wb") as f:
                f.write(os.urandom(file_size))
        striped = os.path.join(work, "striped.bin")
        with open(src, "rb") as f, open(striped, "wb") as out:
            out.write(f.read(128 << 20).ljust(128 << 20, b"\0"))
        served = os.path.join(work, "served")
        os.makedirs(served)
        shutil.copy(src, os.path.join(served, "src.bin"))
        subprocess.run(["cat", src], stdout=subprocess.DEVNULL)  # into the page cache

        rsync_port = free_port()
        module = os.path.join(work, "rsync-module")
        os.makedirs(module)
        conf = os.path.join(work, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write("use chroot = no\nuid = %d\ngid = %d\n[bench]\npath = %s\nread only = no\n" % (os.getuid(), os.getgid(), module))
        start(["rsync", "--daemon", "--no-detach", "--address=127.0.0.1", "--port=%d" % rsync_port, "--config=%s" % conf])
        wait_tcp(rsync_port)

        mb = size / 1e6
        rows = [
            ("dd bs=1M -> file (ceiling)", mb, lambda: b.dd(src)),
            ("nc -> nc -l > file", mb, lambda: b.nc_pair(src)),
            ("rsync daemon push --whole-file", mb, lambda: b.rsync(src, rsync_port)),
            ("lesson's Python pair", mb, lambda: b.lesson(src)),
            ("barge send (BLAKE3 verified, --no-fsync)", mb, lambda: b.barge_send(src, [], ["--no-fsync"])),
            ("barge send (BLAKE3 verified, fsync)", mb, lambda: b.barge_send(src, [], [])),
            ("barge send --legacy (--no-fsync)", mb, lambda: b.barge_send(src, ["--legacy"], ["--no-fsync"])),
            ("barge get (BLAKE3 verified)", mb, lambda: b.barge_get("src.bin", served)),
            ("dd bs=1M conv=fsync -> file (durable ceiling)", mb, lambda: b.dd(src, ["conv=fsync"])),
            ("barge send --tls (--no-fsync)", mb, lambda: b.barge_send(src, [], ["--tls", "--no-fsync"])),
            ("barge get --no-fsync", mb, lambda: b.barge_get("src.bin", served, ["--no-fsync"])),
            (small_rsync_row, a.files * file_size / 1e6, lambda: b.rsync(tree, rsync_port)),
            (small_barge_row, a.files * file_size / 1e6, lambda: b.barge_send(tree, [], ["--no-fsync"])),
            ("iperf3 -l 1M, memory to memory, 4 GiB", (4 << 30) / 1e6, lambda: b.iperf3(4 << 30)),
            ("barge bench, memory to memory, 4 GiB", (4 << 30) / 1e6, lambda: b.barge_bench(4 << 30)),
            ("barge send --streams 1, 128 MiB, L per connection", (128 << 20) / 1e6,
             lambda: b.barge_send(striped, ["--streams", "1"], ["--no-fsync", "--bwlimit-per-connection", a.stream_limit])),
            ("barge send --streams 4, 128 MiB, L per connection", (128 << 20) / 1e6,
             lambda: b.barge_send(striped, ["--streams", "4"], ["--no-fsync", "--bwlimit-per-connection", a.stream_limit])),
        ]
        if a.small_only:
            rows = [r for r in rows if r[0] in (small_rsync_row, small_barge_row)]
        secs = {name: [] for name, _, _ in rows}
        for r in range(a.rounds):
            order = rows if r % 2 == 0 else list(reversed(rows))
            for name, _, fn in order:
                secs[name].append(fn())
            # Keep the disk from filling: drop this round's copies (not timed).
            for d in os.listdir(work):
                if d.startswith("dst-"):
                    shutil.rmtree(os.path.join(work, d))
            print("round %d/%d done" % (r + 1, a.rounds), file=sys.stderr, flush=True)

        med = {name: statistics.median(v) for name, v in secs.items()}
        if a.small_only:
            for name, megabytes, _ in rows:
                print("| %s | %.3f s | %.1f MB/s |" % (name, med[name], megabytes / med[name]))
            print("barge vs rsync: %.2fx (medians of %d rounds, alternating)" % (
                med[small_rsync_row] / med[small_barge_row], a.rounds))
            return
        ceiling = med[rows[0][0]]
        nc = med[rows[1][0]]
        print()
        print("| transfer | median s | MB/s | vs dd ceiling | vs nc |")
        print("|---|---|---|---|---|")
        for name, megabytes, _ in rows:
            s = med[name]
            big = megabytes == mb and "memory to memory" not in name
            print("| %s | %.3f | %.0f | %s | %s |" % (
                name, s, megabytes / s,
                "%.2f" % (ceiling / s) if big else "-",
                "%.2fx" % (nc / s) if big else "-"))
        lesson = med["lesson's Python pair"]
        rsync1 = med["rsync daemon push --whole-file"]
        barge1 = med["barge send (BLAKE3 verified, --no-fsync)"]
        durable = med["barge send (BLAKE3 verified, fsync)"]
        get = med["barge get (BLAKE3 verified)"]
        get_nf = med["barge get --no-fsync"]
        small_rsync = med[small_rsync_row]
        small_barge = med[small_barge_row]
        bench = med["barge bench, memory to memory, 4 GiB"]
        iperf = med["iperf3 -l 1M, memory to memory, 4 GiB"]
        ddf = med["dd bs=1M conv=fsync -> file (durable ceiling)"]
        tls = med["barge send --tls (--no-fsync)"]
        limit = parse_size(a.stream_limit)
        one_stream = (128 << 20) / med["barge send --streams 1, 128 MiB, L per connection"] / limit
        four_streams = (128 << 20) / med["barge send --streams 4, 128 MiB, L per connection"] / (4 * limit)
        print()
        print("barge send vs lesson's Python pair: %.2fx; vs rsync daemon: %.2fx" % (lesson / barge1, rsync1 / barge1))
        print("Targets (issue #16), rates as ratios:")
        for what, ratio, target in [
            ("durable send vs dd conv=fsync", ddf / durable, 0.95),
            ("durable get vs durable send", durable / get, 0.95),
            ("--no-fsync send vs nc", nc / barge1, 1.5),
            ("--no-fsync send vs dd (page cache)", ceiling / barge1, 0.6),
            ("get --no-fsync vs nc", nc / get_nf, 1.5),
            ("get --no-fsync vs dd (page cache)", ceiling / get_nf, 0.6),
            ("send --tls vs plain (both --no-fsync)", barge1 / tls, 0.9),
            ("%d x %s vs rsync" % (a.files, a.file_size), small_rsync / small_barge, 2.0),
            ("barge bench vs iperf3", iperf / bench, 0.9),
            ("--streams 1 vs L (%s/s per connection)" % a.stream_limit, one_stream, 0.9),
            ("--streams 4 vs 4 x L", four_streams, 0.9),
        ]:
            print("  %-40s %5.2fx  (target >= %.2fx: %s)" % (what, ratio, target, "met" if ratio >= target else "NOT met"))
        print("file %s; medians of %d rounds; kernel %s; %d cores%s" % (
            a.size, a.rounds, os.uname().release, os.cpu_count(),
            "; free-page reporting paused, memory pre-faulted (--stable)" if a.stable else ""))
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
