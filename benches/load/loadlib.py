"""Helpers shared by the load scripts in benches/load (media.py, turn.py): CPU and memory of
processes and of the machine, and timestamped progress lines."""

import os
import subprocess


def log(*args):
    print(*args, flush=True)


def rss_kib(pid, field="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_times():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v[:8]) - idle, sum(v[:8])


def compiles_running():
    """PIDs of Rust builds or test runs (rustc, cargo) on the machine."""
    r = subprocess.run(["pgrep", "-f", r"(^|/)(rustc|cargo)( |$)"], stdout=subprocess.PIPE, text=True)
    return [p for p in r.stdout.split() if int(p) != os.getpid()]
