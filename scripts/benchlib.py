"""Shared helpers of the benchmark scripts: processes that are always stopped by their PID,
ephemeral ports on 127.0.0.1, waiting for a server to listen, and a process's peak RSS."""
import os
import re
import signal
import socket
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BARGE_BIN runs another build (e.g. the previous commit's) through the same benchmark.
BARGE = os.environ.get("BARGE_BIN") or os.path.join(ROOT, "target", "release", "barge")
STARTED = []


def start(cmd, **kw):
    """Starts a process and remembers it so that stop_all() ends it."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **kw)
    STARTED.append(p)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def stop_all():
    for p in STARTED:
        stop(p)


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port, deadline=10.0):
    """Waits until 127.0.0.1:port accepts a connection (the probe connection is closed at once)."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    raise SystemExit("nothing answers on port %d" % port)


def wait_listening(port, deadline=10.0):
    """Waits until something listens on 127.0.0.1:port, without connecting: servers that serve a
    single connection (nc -l, the lesson's) would take a probe for the transfer."""
    needle = ":%04X" % port
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1].endswith(needle) and fields[3] == "0A":
                    return
        time.sleep(0.01)
    raise SystemExit("nothing listens on port %d" % port)


def random_file(path, size):
    """Writes `size` random bytes to `path`, 16 MiB at a time (random: garage and compression
    must not get cheaper runs from repeated data)."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 << 20)
            f.write(os.urandom(n))
            left -= n


def peak_rss_kib(pid):
    """The peak resident set size (VmHWM) of a running process, in KiB."""
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
