"""Helpers shared by the load scripts in benches/load (media.py, turn.py): CPU and memory of
processes and of the machine, and timestamped progress lines."""

import os
import subprocess
import time


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


def proc_ticks(pid):
    """User + system CPU ticks of a process (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except OSError:
        return 0


def machine_busy_pct(secs=1.0, exclude=()):
    """CPU % (100 = one core) used on the machine over `secs`, minus the `exclude` PIDs'."""
    busy0, total0 = cpu_times()
    own0 = sum(proc_ticks(p) for p in exclude)
    time.sleep(secs)
    busy1, total1 = cpu_times()
    own1 = sum(proc_ticks(p) for p in exclude)
    machine = 100 * (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count()
    return machine - 100 * (own1 - own0) / os.sysconf("SC_CLK_TCK") / secs


def wait_quiet(limit, exclude=(), idle_pct=15):
    """Waits (at most `limit` s) until no cargo/rustc runs and the rest of the machine is idle
    (under `idle_pct` % of a core over 1 s, the `exclude` PIDs not counted); returns whether
    it still was not."""
    deadline, said = time.time() + limit, False
    while True:
        builds = compiles_running()
        busy = machine_busy_pct(exclude=exclude)
        if not builds and busy < idle_pct:
            return False
        if time.time() > deadline:
            log(f"  machine still busy after {limit:.0f} s (cargo/rustc: {len(builds)}, {busy:.0f} % CPU): "
                "measuring anyway (flagged)")
            return True
        if not said:
            log(f"  waiting for the machine to be quiet (cargo/rustc processes: {len(builds)}, {busy:.0f} % CPU)")
            said = True
        time.sleep(4)
