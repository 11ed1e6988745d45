#!/usr/bin/env python3
"""TURN relay throughput and allocation rate of coturn and of switchboard, with the same load.

  benches/load/turn.py [--engines coturn,switchboard] [--auth static|secret] [--transport udp|tcp]
                       [--steps 50:20,300:20,50:1,75:1,100:1] [--secs 15]
                       [--alloc-conc 50] [--alloc-secs 10] [--repeat 3] [--json FILE] [--no-build]

Both engines get the same clients, settings and ports. They alternate, one at a time and never
together: each step runs on coturn, then on switchboard, then the next step. --repeat N runs the
whole list N times and the summary gives medians. Every step starts a fresh server, so no
allocation is left over from an earlier step.

Servers (loopback only, no TLS, realm bench.local, relay ports 40000-59999, loopback peers allowed,
no quotas):
* coturn 4.6 (Debian `turnserver`): 2 relay threads (--relay-threads=2), a config file written
  per step (as ../shared/peers/coturn/turnserver.conf, but with its own ports and files).
* switchboard: `target/release/switchboard serve` in a temp data dir (SQLite), configured
  through SWITCHBOARD_* variables (class Switchboard below), at log level warn.
Credentials (--auth):
* static (default): long-term credentials. Both servers use the same user: on switchboard, the
  bootstrap admin (a control-plane user's email and login password); on coturn,
  `--lt-cred-mech --user=<the same email>:<the same password>`.
* secret: TURN REST credentials (`<expiry>:bench`, HMAC-SHA1 of shared secret benchsecret):
  coturn `--use-auth-secret --static-auth-secret=benchsecret`, uclient `-u bench -W benchsecret`.

1. Relay throughput, per --steps M:Z (M sessions, one packet every Z ms each): a fresh server and
   a fresh UDP echo peer (`turnutils_peer -L 127.0.0.1 -p PEER`), then
     turnutils_uclient -u USER -w PASS -e 127.0.0.1 -r PEER -c -m M -n N -z Z -l 172 -p PORT 127.0.0.1
   (-t as well with --transport tcp), with N = secs * 1000 / Z. Each session allocates, binds
   a channel to the peer and sends N ChannelData messages of 172 bytes. The peer echoes each one
   back through the relay, so the server relays every echoed message twice. uclient runs with
   LD_PRELOAD of turnport.c (built into the run's temp dir): see that file for why.
   uclient connects its sessions one after the other (about 0.1 s each), and each session then
   starts sending 1-6 s after the connect phase. So the full rate is reached from about 6 s into
   a step, and --secs should be well above 6.
   Recorded per step: messages sent and received and the loss (uclient), RTT average and max
   (uclient, 1 ms resolution), and the server's CPU during the transmit phase (from uclient's
   "Total connect time" line to its exit). From these come CPU % (average, and the busiest
   second) and CPU us per relayed packet (2 per received echo). Also the CPU of uclient, of the
   peer and of the rest of the machine, the server's RSS (idle before the step, and the peak
   sampled every 0.25 s), and the machine's UDP counters (/proc/net/snmp): the peak relayed
   packets/s over 1 s, which shows whether the full rate was reached, and RcvbufErrors, which
   counts datagrams dropped on full socket buffers.
2. Allocation rate: a fresh server, then --alloc-conc concurrent clients (an asyncio client in
   this file, run as a child process) for --alloc-secs. Each allocation uses a fresh UDP socket:
   Allocate -> 401 -> Allocate with long-term credentials (MD5 key, MESSAGE-INTEGRITY,
   FINGERPRINT) -> 200 (its MESSAGE-INTEGRITY is checked), then Refresh with lifetime 0 -> 200.
   Recorded: allocations/s, latency from the first Allocate to the 200 (p50/p99), failures by
   kind, retransmissions, server CPU and CPU us per allocation, client CPU. The Python client
   uses about 90 % of a core at 6 000-9 000 allocations/s, so on 2 cores it is the limit; the
   server CPU per allocation compares the servers either way. The relay range is wide (20 000
   ports) because coturn keeps a freed relay port about 1 s: with 10 000 ports it answers 508
   from about 8 500 allocations/s.

Local ports: uclient 20000-31999 (turnport.c), the allocation client 10000-19999 and
32000-39999, the servers and the peer from 3478 up, relay 40000-59999 (switchboard's unused RTP
range is moved to 61000-61999).

The summary prints medians per step, and for each engine the largest step by offered rate with
loss < 0.1 % (median) and every message sent. Results go to --json, by default
benches/load/results/turn-<date>-<time>.json, written after every step. They include the
server's warnings and the build (commit, modified files).

Everything is on 127.0.0.1, every step and child process is bounded in time, and only the
processes started here are stopped (by PID). Before each step the harness waits (at most
--quiet-wait s) until no cargo/rustc runs and the machine is idle. Steps where other processes
used more than 15 % of a core are run again (--retries) and flagged if they stay disturbed.
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import compiles_running, cpu_times, log, proc_ticks, rss_kib, wait_quiet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "benches", "load")
BINARY = os.path.join(ROOT, "target", "release", "switchboard")
RESULTS = os.path.join(HERE, "results")
SHIM_SOURCE = os.path.join(HERE, "turnport.c")

REALM = "bench.local"
ADMIN_EMAIL = "bench@bench.local"          # the TURN user for --auth static, on both servers
ADMIN_PASSWORD = "bench-admin-password"
SECRET = "benchsecret"
REST_USER = "bench"
RELAY_PORTS = (40000, 59999)              # both servers' relay range (coturn holds a freed port ~1 s)
UCLIENT_PORTS = (20000, 31999)            # uclient's local ports (turnport.c)
ALLOC_PORTS = list(range(10000, 20000)) + list(range(32000, 40000))   # the allocation client's
SERVICE_PORTS = (3478, 9999)              # where the server and peer ports are looked for
MSG_LEN = 172
RELAY_THREADS = 2
LOSS_OK = 0.1
OTHER_BUSY_PCT = 15
TICK = os.sysconf("SC_CLK_TCK")
COOKIE = 0x2112A442


class StepError(Exception):
    """A step that could not be run (its details go to the results)."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


# ---------------------------------------------------------------- machine, processes, ports

def port_free(port, tcp=True):
    kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM) if tcp else (socket.SOCK_DGRAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_port(start, taken, span=2, tcp=True):
    """A port p in SERVICE_PORTS from `start` with p..p+span-1 free (UDP, and TCP if asked)
    and not in `taken`: outside the relay and client port ranges."""
    for p in range(start, SERVICE_PORTS[1] - span):
        if any(q in taken for q in range(p, p + span)):
            continue
        if all(port_free(q, tcp) for q in range(p, p + span)):
            taken.update(range(p, p + span))
            return p
    raise StepError("no free port for the server or the peer")


def stop_process(proc, timeout=15):
    """SIGTERM, then SIGKILL after `timeout` s; only this child, by PID."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def udp_counters():
    """The machine's UDP counters from /proc/net/snmp (InDatagrams, RcvbufErrors, ...)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split()[1:] for line in f if line.startswith("Udp:")]
    return {k: int(v) for k, v in zip(rows[0], rows[1])}


class Sampler(threading.Thread):
    """Every 0.25 s: the server's VmRSS and CPU ticks, and the machine's UDP datagrams received."""

    def __init__(self, pid, period=0.25):
        super().__init__(daemon=True)
        self.pid, self.period, self.rss, self.udp = pid, period, [], []
        self.stop_event = threading.Event()

    def sample(self):
        self.udp.append((time.monotonic(), udp_counters(), proc_ticks(self.pid)))

    def run(self):
        while not self.stop_event.is_set():
            self.rss.append(rss_kib(self.pid))
            self.sample()
            self.stop_event.wait(self.period)

    def stop(self):
        self.stop_event.set()
        self.join()
        self.sample()
        return max(self.rss or [0])

    def peak(self, value, window=1.0):
        """The highest rate of `value(sample)` per second over any `window` s."""
        best, j = 0.0, 0
        for i in range(len(self.udp)):
            while j < i and self.udp[i][0] - self.udp[j + 1][0] >= window:
                j += 1
            dt = self.udp[i][0] - self.udp[j][0]
            if dt >= window * 0.9:
                best = max(best, (value(self.udp[i]) - value(self.udp[j])) / dt)
        return best

    def udp_peak_per_s(self):
        """The highest UDP InDatagrams rate over 1 s."""
        return self.peak(lambda sample: sample[1]["InDatagrams"])

    def cpu_peak_pct(self):
        """The server's highest CPU % over 1 s (ticks of 10 ms: +-1 %)."""
        return 100 * self.peak(lambda sample: sample[2]) / TICK

    def udp_delta(self):
        if len(self.udp) < 2:
            return {}
        first, last = self.udp[0][1], self.udp[-1][1]
        return {k: last[k] - first[k] for k in ("InDatagrams", "OutDatagrams", "RcvbufErrors", "SndbufErrors",
                                                "InErrors", "NoPorts")}


# ---------------------------------------------------------------- STUN (the allocation client, readiness)

def stun_attr(t, v):
    return struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)


def stun_message(mtype, attrs, key=None, tid=None):
    """A STUN message with MESSAGE-INTEGRITY (if `key`) and FINGERPRINT."""
    tid = tid or os.urandom(12)
    body = b"".join(attrs)
    if key is not None:
        head = struct.pack("!HHI", mtype, len(body) + 24, COOKIE) + tid
        body += stun_attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    head = struct.pack("!HHI", mtype, len(body) + 8, COOKIE) + tid
    crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    return tid, head + body + stun_attr(0x8028, struct.pack("!I", crc))


def stun_parse(data):
    """(type, transaction id, {attr: value}, error code, offset of MESSAGE-INTEGRITY or None)."""
    if len(data) < 20:
        return None
    mtype, length = struct.unpack("!HH", data[:4])
    attrs, i, end, mi_at, err = {}, 20, min(len(data), 20 + length), None, None
    while i + 4 <= end:
        t, n = struct.unpack("!HH", data[i:i + 4])
        if t == 0x0008 and mi_at is None:
            mi_at = i
        attrs.setdefault(t, data[i + 4:i + 4 + n])
        i += 4 + n + (-n % 4)
    if 0x0009 in attrs and len(attrs[0x0009]) >= 4:
        v = attrs[0x0009]
        err = (v[2] & 7) * 100 + v[3]
    return mtype, data[8:20], attrs, err, mi_at


def integrity_ok(data, mi_at, key):
    if mi_at is None:
        return False
    head = data[:2] + struct.pack("!H", mi_at + 24 - 20) + data[4:20]
    want = hmac.new(key, head + data[20:mi_at], hashlib.sha1).digest()
    return hmac.compare_digest(want, data[mi_at + 4:mi_at + 24])


def stun_binding_ok(port, timeout=0.3):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        tid, msg = stun_message(0x0001, [])
        try:
            s.sendto(msg, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
        parsed = stun_parse(data)
        return bool(parsed) and parsed[0] == 0x0101 and parsed[1] == tid


def credentials(auth):
    """(uclient arguments, user, password) for an --auth mode: the same for both servers."""
    if auth == "static":
        return ["-u", ADMIN_EMAIL, "-w", ADMIN_PASSWORD], ADMIN_EMAIL, ADMIN_PASSWORD
    user = f"{int(time.time()) + 86400}:{REST_USER}"
    password = base64.b64encode(hmac.new(SECRET.encode(), user.encode(), hashlib.sha1).digest()).decode()
    return ["-u", REST_USER, "-W", SECRET], user, password


# ---------------------------------------------------------------- the servers

class Coturn:
    name = "coturn"

    def __init__(self, work, auth, port):
        self.work, self.port = work, port
        conf = os.path.join(work, "turnserver.conf")
        lines = [
            "listening-ip=127.0.0.1", "relay-ip=127.0.0.1", f"listening-port={port}",
            f"min-port={RELAY_PORTS[0]}", f"max-port={RELAY_PORTS[1]}", f"realm={REALM}",
            f"relay-threads={RELAY_THREADS}", "fingerprint", "no-tls", "no-dtls", "no-cli",
            "allow-loopback-peers", "no-multicast-peers", "no-software-attribute",
            "simple-log", "log-file=stdout", "total-quota=0", "user-quota=0",
            f"userdb={os.path.join(work, 'turndb')}", f"pidfile={os.path.join(work, 'turnserver.pid')}",
        ]
        if auth == "static":
            lines += ["lt-cred-mech", f"user={ADMIN_EMAIL}:{ADMIN_PASSWORD}"]
        else:
            lines += ["use-auth-secret", f"static-auth-secret={SECRET}"]
        with open(conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.log_path = os.path.join(work, "turnserver.log")
        self.out = open(self.log_path, "w")
        self.proc = subprocess.Popen(["turnserver", "-c", conf], cwd=work, stdout=self.out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            if stun_binding_ok(port):
                return
            time.sleep(0.1)
        self.stop()
        raise StepError("coturn did not start", open(self.log_path, errors="replace").read()[-2000:])

    def problems(self):
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f
                    if re.search(r"ERROR|error", line) and "allow_loopback_peers" not in line][:20]

    def stop(self):
        code = stop_process(self.proc)
        self.out.close()
        return code


class Switchboard:
    """switchboard serve in a temp data dir with its TURN server on 127.0.0.1:port (UDP and TCP)."""
    name = "switchboard"

    def __init__(self, work, auth, port, taken):
        self.work, self.port = work, port
        if not os.path.exists(BINARY):
            raise StepError(f"{BINARY} is missing: cargo build --release --bin switchboard")
        http_port = pick_port(port + 2, taken, span=1)
        self.env = {
            "SWITCHBOARD_DATA_DIR": os.path.join(work, "data"),
            "SWITCHBOARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SWITCHBOARD_BOOTSTRAP__ADMIN_EMAIL": ADMIN_EMAIL,
            "SWITCHBOARD_LOG__LEVEL": "warn",
            "SWITCHBOARD_HTTP__BIND": f"127.0.0.1:{http_port}",
            "SWITCHBOARD_SIP__UDP_BIND": "127.0.0.1:0",
            "SWITCHBOARD_SIP__TCP_BIND": "127.0.0.1:0",
            "SWITCHBOARD_SIP__TLS": "false",
            "SWITCHBOARD_HTTP__TLS": "false",
            "SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS": "127.0.0.1",
            "SWITCHBOARD_MEDIA__BIND_IP": "127.0.0.1",
            # RTP ports out of the way of the relay and client ranges (no calls are made).
            "SWITCHBOARD_MEDIA__RTP_PORT_MIN": "61000",
            "SWITCHBOARD_MEDIA__RTP_PORT_MAX": "61999",
            "SWITCHBOARD_TURN__UDP_BIND": f"127.0.0.1:{port}",
            "SWITCHBOARD_TURN__TCP_BIND": f"127.0.0.1:{port}",
            "SWITCHBOARD_TURN__TLS": "false",
            "SWITCHBOARD_TURN__RELAY_IP": "127.0.0.1",
            "SWITCHBOARD_TURN__RELAY_PORT_MIN": str(RELAY_PORTS[0]),
            "SWITCHBOARD_TURN__RELAY_PORT_MAX": str(RELAY_PORTS[1]),
            "SWITCHBOARD_TURN__REALM": REALM,
            "SWITCHBOARD_TURN__ALLOW_PEERS": '["127.0.0.0/8"]',
            "SWITCHBOARD_TURN__MAX_ALLOCATIONS_PER_USER": "0",
            "SWITCHBOARD_TURN__MAX_ALLOCATIONS": "0",
            "SWITCHBOARD_TURN__MAX_BANDWIDTH_PER_ALLOCATION": "0",
            "SWITCHBOARD_TURN__SHARED_SECRET": SECRET,
        }
        full = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        full.update(self.env)
        self.out_path = os.path.join(work, "server.out")
        self.err_path = os.path.join(work, "server.err")
        self.out, self.err = open(self.out_path, "w+"), open(self.err_path, "w")
        self.proc = subprocess.Popen([BINARY, "serve"], cwd=work, env=full, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                break
            self.out.seek(0)
            if "TURN: UDP listening" in self.out.read() and stun_binding_ok(port):
                return
            time.sleep(0.1)
        self.stop()
        raise StepError("switchboard did not start (or its TURN port did not answer a Binding request)",
                        (open(self.err_path, errors="replace").read()[-1500:]
                         + open(self.out_path, errors="replace").read()[-500:]))

    def problems(self):
        lines = []
        for path in (self.err_path, self.out_path):
            with open(path, errors="replace") as f:
                for line in f:
                    line = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
                    if re.search(r"\b(WARN|ERROR)\b", line) and "self-signed certificate" not in line:
                        lines.append(line)
        return lines[:20]

    def stop(self):
        code = stop_process(self.proc, timeout=30)
        self.out.close()
        self.err.close()
        return code


def start_server(engine, work, auth, taken):
    port = pick_port(SERVICE_PORTS[0], taken, span=2)   # coturn also binds port + 1 by default
    if engine == "coturn":
        return Coturn(work, auth, port)
    return Switchboard(work, auth, port, taken)


# ---------------------------------------------------------------- 1. relay throughput with uclient

UCLIENT_PATTERNS = {
    "sent_received": r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$",
    "lost": r"Total lost packets (\d+) \(([\d.]+)%\), total send dropped (\d+)",
    "rtt": r"Average round trip delay ([\d.]+) ms; min = (\d+) ms, max = (\d+) ms",
    "jitter": r"Average jitter ([\d.]+) ms",
    "connect_s": r"Total connect time is (\d+)",
    "transmit_s": r"Total transmit time is (\d+)",
}


def parse_uclient(text):
    out = {}
    for name, pattern in UCLIENT_PATTERNS.items():
        found = re.findall(pattern, text, re.M)
        out[name] = found[-1] if found else None
    errors = {}
    for line in text.splitlines():
        if re.search(r"error \d{3}|ERROR|Cannot|Wrong integrity|trying allocate again|cannot", line):
            key = re.sub(r"^\d+: : ", "", line).strip()
            key = re.sub(r"0x[0-9a-f]+|\d{4,}", "N", key)[:100]
            errors[key] = errors.get(key, 0) + 1
    sent, received = (int(x) for x in out["sent_received"]) if out["sent_received"] else (None, None)
    return {
        "sent": sent, "received": received,
        "lost": int(out["lost"][0]) if out["lost"] else None,
        "loss_pct": float(out["lost"][1]) if out["lost"] else None,
        "send_dropped": int(out["lost"][2]) if out["lost"] else None,
        "rtt_ms": {"avg": float(out["rtt"][0]), "min": int(out["rtt"][1]), "max": int(out["rtt"][2])}
        if out["rtt"] else None,
        "jitter_avg_ms": float(out["jitter"]) if out["jitter"] else None,
        "uclient_connect_s": int(out["connect_s"]) if out["connect_s"] else None,
        "uclient_transmit_s": int(out["transmit_s"]) if out["transmit_s"] else None,
        "uclient_errors": errors,
    }


def build_shim(tmp):
    path = os.path.join(tmp, "libturnport.so")
    subprocess.run(["cc", "-O2", "-Wall", "-shared", "-fPIC", "-o", path, SHIM_SOURCE, "-ldl"], check=True,
                   timeout=60)
    return path


def step_relay(a, engine, sessions, interval, tmp, shim):
    work = tempfile.mkdtemp(prefix=f"{engine}.", dir=tmp)
    taken = set()
    server = peer = uclient = peer_log = None
    try:
        server = start_server(engine, work, a.auth, taken)
        peer_port = pick_port(server.port + 10, taken, span=2, tcp=False)   # the peer binds port + 1 too
        peer_log = open(os.path.join(work, "peer.log"), "w")
        peer = subprocess.Popen(["turnutils_peer", "-L", "127.0.0.1", "-p", str(peer_port)], stdout=peer_log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        time.sleep(0.3)
        if peer.poll() is not None:
            raise StepError("turnutils_peer did not start", open(peer_log.name).read()[-500:])
        rss_idle = rss_kib(server.pid)
        messages = int(a.secs * 1000 / interval)
        cred, _, _ = credentials(a.auth)
        cmd = (["turnutils_uclient"] + cred + ["-e", "127.0.0.1", "-r", str(peer_port), "-c", "-m", str(sessions),
               "-n", str(messages), "-z", str(interval), "-l", str(MSG_LEN), "-p", str(server.port)]
               + (["-t"] if a.transport == "tcp" else []) + ["127.0.0.1"])
        env = dict(os.environ, LD_PRELOAD=shim, TURNPORT_MIN=str(UCLIENT_PORTS[0]), TURNPORT_MAX=str(UCLIENT_PORTS[1]))
        limit = 40 + 0.15 * sessions + a.secs + 25    # connect ~0.1 s/session, start spread 6 s, stop 10 s
        sampler = Sampler(server.pid)
        marks = {}
        lines = []
        t0 = time.time()
        s0, p0 = proc_ticks(server.pid), proc_ticks(peer.pid)
        m0 = cpu_times()
        sampler.start()
        uclient = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   stdin=subprocess.DEVNULL, errors="replace")
        killed = [False]

        def watchdog():
            if uclient.poll() is None:
                killed[0] = True
                uclient.kill()
        timer = threading.Timer(limit, watchdog)
        timer.start()
        try:
            for line in uclient.stdout:
                lines.append(line)
                if "connect" not in marks and "Total connect time" in line:
                    marks["connect"] = (time.time(), proc_ticks(server.pid), proc_ticks(peer.pid), cpu_times())
            _, status, usage = os.wait4(uclient.pid, 0)
            uclient.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            rss_peak = sampler.stop()
        t1, s1, p1, m1 = time.time(), proc_ticks(server.pid), proc_ticks(peer.pid), cpu_times()
        text = "".join(lines)
        res = parse_uclient(text)
        wall = t1 - t0
        if "connect" in marks:
            tc, sc, pc, mc = marks["connect"]
        else:
            tc, sc, pc, mc = t0, s0, p0, m0
        transmit = max(0.001, t1 - tc)
        server_cpu_s = (s1 - sc) / TICK
        machine = 100 * (m1[0] - mc[0]) / max(1, m1[1] - mc[1]) * os.cpu_count()
        uclient_cpu_pct = 100 * (usage.ru_utime + usage.ru_stime) / wall
        res.update({
            "sessions": sessions, "interval_ms": interval, "messages_per_session": messages,
            "offered_per_s": round(sessions * 1000 / interval), "transport": a.transport, "auth": a.auth,
            "uclient_exit": uclient.returncode, "uclient_killed_after_s": round(limit) if killed[0] else None,
            "wall_s": round(wall, 2), "connect_wall_s": round(tc - t0, 2), "transmit_wall_s": round(transmit, 2),
            "server_cpu_s": {"connect": round((sc - s0) / TICK, 2), "transmit": round(server_cpu_s, 2)},
            "cpu_pct": {
                "server": round(100 * server_cpu_s / transmit, 1),
                "server_peak_1s": round(sampler.cpu_peak_pct()),
                "server_connect": round(100 * (sc - s0) / TICK / max(0.001, tc - t0), 1),
                "peer": round(100 * (p1 - pc) / TICK / transmit, 1),
                "uclient": round(uclient_cpu_pct, 1),   # over the whole run
            },
            "rss_kib": {"idle": rss_idle, "peak": rss_peak},
            "rss_per_session_kib": round((rss_peak - rss_idle) / sessions, 2),
            # Machine-wide UDP counters over the run (on an idle box, this traffic). Each echo is 4
            # UDP datagrams over UDP (client->server->peer->server->client), 2 over TCP (only the
            # peer legs), and 2 relayed packets either way.
            "udp_counters": sampler.udp_delta(),
            "relayed_per_s_peak": round(sampler.udp_peak_per_s() * (0.5 if a.transport == "udp" else 1.0)),
        })
        # The rest of the machine during the transmit phase (uclient's whole-run average stands in
        # for its transmit-phase CPU).
        res["cpu_pct"]["other"] = round(max(0.0, machine - res["cpu_pct"]["server"] - res["cpu_pct"]["peer"]
                                            - uclient_cpu_pct), 1)
        res["server_us_per_relayed_packet"] = (round(1e6 * server_cpu_s / (2 * res["received"]), 2)
                                               if res["received"] else None)
        res["server_log_problems"] = server.problems()
        res["server_died"] = server.proc.poll()     # its exit status if it ended during the step
        res["uclient_tail"] = lines[-8:]
        return res
    finally:
        if uclient and uclient.poll() is None:
            uclient.kill()
            uclient.wait()
        stop_process(peer, timeout=5)
        if peer_log:
            peer_log.close()
        if server:
            code = server.stop()
            if code not in (0, None, -signal.SIGTERM):
                log(f"  {engine} exited with {code}")
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- 2. allocation rate: the client

class AllocClient:
    """C concurrent workers; each allocation from a fresh UDP socket: Allocate -> 401 ->
    authenticated Allocate -> 200 (integrity checked) -> Refresh(0) -> 200."""

    def __init__(self, port, user, password, conc, secs, max_allocations):
        self.server = ("127.0.0.1", port)
        self.user, self.password = user.encode(), password.encode()
        self.conc, self.secs, self.max = conc, secs, max_allocations
        self.keys = {}
        self.next_port = 0
        self.stats = {"allocations": 0, "deallocations": 0, "transactions": 0, "retransmissions": 0}
        self.failures = {}
        self.latency = []

    def fail(self, what):
        self.failures[what] = self.failures.get(what, 0) + 1

    def key(self, realm):
        if realm not in self.keys:
            self.keys[realm] = hashlib.md5(self.user + b":" + realm + b":" + self.password).digest()
        return self.keys[realm]

    def open_socket(self):
        # Local ports in turn, not the kernel's pick: a just-closed port could come back while
        # the server still remembers its 5-tuple.
        for _ in range(len(ALLOC_PORTS)):
            port = ALLOC_PORTS[self.next_port]
            self.next_port = (self.next_port + 1) % len(ALLOC_PORTS)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.connect(self.server)
            s.setblocking(False)
            return s
        raise RuntimeError("no free local port")

    @staticmethod
    def send(sock, packet):
        try:
            sock.send(packet)
        except OSError:        # e.g. an ICMP port unreachable reported on this socket: retransmit
            pass

    async def transact(self, loop, sock, box, tid, packet):
        """Sends a request (retransmitted after 0.5, 1 and 2 s) and returns the response."""
        fut = loop.create_future()
        box[0], box[1] = tid, fut
        self.send(sock, packet)
        self.stats["transactions"] += 1
        for wait in (0.5, 1.0, 2.0, None):
            handle = loop.call_later(wait or 4.0, lambda f=fut: f.done() or f.set_result(None))
            data = await fut
            handle.cancel()
            if data is not None:
                return data
            if wait is None:
                raise TimeoutError
            fut = loop.create_future()
            box[1] = fut
            self.send(sock, packet)
            self.stats["retransmissions"] += 1

    async def worker(self, deadline):
        loop = asyncio.get_running_loop()
        transport = stun_attr(0x0019, bytes([17, 0, 0, 0]))
        while time.monotonic() < deadline and self.stats["allocations"] < self.max:
            sock = self.open_socket()
            box = [None, None]

            def readable(sock=sock, box=box):
                while True:
                    try:
                        data = sock.recv(2048)
                    except (BlockingIOError, ConnectionRefusedError):
                        return
                    if box[1] is not None and not box[1].done() and data[8:20] == box[0]:
                        box[1].set_result(data)
            loop.add_reader(sock.fileno(), readable)
            t0 = time.monotonic()
            try:
                tid, msg = stun_message(0x0003, [transport])
                mtype, _, attrs, err, _ = stun_parse(await self.transact(loop, sock, box, tid, msg))
                if err != 401 or 0x0014 not in attrs or 0x0015 not in attrs:
                    self.fail(f"first Allocate: {hex(mtype)} {err}")
                    continue
                realm, nonce = attrs[0x0014], attrs[0x0015]
                key = self.key(realm)
                auth = [stun_attr(0x0006, self.user), stun_attr(0x0014, realm), stun_attr(0x0015, nonce)]
                tid, msg = stun_message(0x0003, [transport] + auth, key)
                data = await self.transact(loop, sock, box, tid, msg)
                mtype, _, attrs, err, mi_at = stun_parse(data)
                if mtype != 0x0103:
                    self.fail(f"authenticated Allocate: {hex(mtype)} {err}")
                    continue
                if 0x0016 not in attrs:
                    self.fail("Allocate 200 without XOR-RELAYED-ADDRESS")
                if not integrity_ok(data, mi_at, key):
                    self.fail("Allocate 200 with missing or wrong MESSAGE-INTEGRITY")
                self.stats["allocations"] += 1
                self.latency.append(time.monotonic() - t0)
                tid, msg = stun_message(0x0004, [stun_attr(0x000D, struct.pack("!I", 0))] + auth, key)
                mtype, _, attrs, err, _ = stun_parse(await self.transact(loop, sock, box, tid, msg))
                if mtype == 0x0104:
                    self.stats["deallocations"] += 1
                else:
                    self.fail(f"Refresh(0): {hex(mtype)} {err}")
            except TimeoutError:
                self.fail("timeout (4 sends, 7.5 s)")
            except (TypeError, struct.error):
                self.fail("unparsable response")
            finally:
                loop.remove_reader(sock.fileno())
                sock.close()

    async def run(self):
        t0 = time.monotonic()
        await asyncio.gather(*(self.worker(t0 + self.secs) for _ in range(self.conc)))
        elapsed = time.monotonic() - t0
        lat = sorted(self.latency)
        q = (lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 2)) if lat else (lambda p: None)
        return dict(self.stats, failures=self.failures, failed=sum(self.failures.values()), secs=round(elapsed, 2),
                    allocations_per_s=round(self.stats["allocations"] / elapsed, 1),
                    transactions_per_s=round(self.stats["transactions"] / elapsed, 1),
                    alloc_latency_ms={"p50": q(0.50), "p99": q(0.99), "max": q(1.0)})


def alloc_client_main(argv):
    ap = argparse.ArgumentParser(prog="turn.py _alloc_client")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--conc", type=int, default=50)
    ap.add_argument("--secs", type=float, default=10)
    ap.add_argument("--max", type=int, default=1000000)
    a = ap.parse_args(argv)
    client = AllocClient(a.port, a.user, a.password, a.conc, a.secs, a.max)
    print(json.dumps(asyncio.run(client.run())), flush=True)


def step_alloc(a, engine, tmp):
    work = tempfile.mkdtemp(prefix=f"{engine}.", dir=tmp)
    taken = set()
    server = None
    try:
        server = start_server(engine, work, a.auth, taken)
        _, user, password = credentials(a.auth)
        rss_idle = rss_kib(server.pid)
        sampler = Sampler(server.pid)
        cmd = [sys.executable, os.path.abspath(__file__), "_alloc_client", "--port", str(server.port), "--user", user,
               "--password", password, "--conc", str(a.alloc_conc), "--secs", str(a.alloc_secs)]
        out_path, err_path = os.path.join(work, "client.out"), os.path.join(work, "client.err")
        t0, s0, m0 = time.time(), proc_ticks(server.pid), cpu_times()
        sampler.start()
        with open(out_path, "w") as out, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        timer = threading.Timer(a.alloc_secs + 30, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            timer.cancel()
            rss_peak = sampler.stop()
        t1, s1, m1 = time.time(), proc_ticks(server.pid), cpu_times()
        try:
            res = json.loads(open(out_path).read().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise StepError(f"allocation client failed ({proc.returncode})", open(err_path).read()[-1500:])
        wall = t1 - t0
        server_cpu_s = (s1 - s0) / TICK
        machine = 100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * os.cpu_count()
        client_cpu = round(100 * (usage.ru_utime + usage.ru_stime) / wall, 1)
        res.update({
            "auth": a.auth, "concurrency": a.alloc_conc, "wall_s": round(wall, 2),
            "cpu_pct": {"server": round(100 * server_cpu_s / wall, 1), "client": client_cpu},
            "server_us_per_allocation": round(1e6 * server_cpu_s / res["allocations"], 1) if res["allocations"] else None,
            "rss_kib": {"idle": rss_idle, "peak": rss_peak},
            "server_log_problems": server.problems(),
            "server_died": server.proc.poll(),
        })
        if client_cpu is not None:
            res["cpu_pct"]["other"] = round(max(0.0, machine - res["cpu_pct"]["server"] - client_cpu), 1)
        return res
    finally:
        if server:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- reporting

def fmt_relay(engine, r):
    flags = []
    if r.get("uclient_exit"):
        flags.append(f"uclient exit {r['uclient_exit']}")
    if r.get("uclient_killed_after_s"):
        flags.append(f"uclient killed after {r['uclient_killed_after_s']} s")
    if r["sent"] is not None and r["sent"] < r["sessions"] * r["messages_per_session"]:
        flags.append(f"sent {r['sent']} of {r['sessions'] * r['messages_per_session']}")
    if r["uclient_errors"]:
        flags.append(f"uclient: {sum(r['uclient_errors'].values())} error lines")
    if r.get("busy_during_step"):
        flags.append("machine busy")
    if r.get("server_log_problems"):
        flags.append(f"{len(r['server_log_problems'])} server log problems")
    if r.get("server_died") is not None:
        flags.append(f"SERVER DIED (exit {r['server_died']})")
    rtt = r["rtt_ms"] or {"avg": float("nan"), "max": -1}
    cpu = r["cpu_pct"]
    loss = f"{r['loss_pct']:.3f}%" if r["loss_pct"] is not None else "?"
    log(f"{engine:<12} {r['sessions']:>4}x{r['interval_ms']:<3}ms offered={r['offered_per_s']:<6} sent={r['sent']} "
        f"recv={r['received']} loss={loss} relayed_peak/s={r['relayed_per_s_peak']} "
        f"udp_rcvbuf_errors={r['udp_counters'].get('RcvbufErrors')} rtt avg/max={rtt['avg']:.2f}/{rtt['max']} ms "
        f"connect={r['connect_wall_s']}s cpu% server={cpu['server']} (peak 1 s {cpu['server_peak_1s']}) uclient={cpu['uclient']} peer={cpu['peer']} "
        f"other={cpu['other']} server_us/relayed_pkt={r['server_us_per_relayed_packet']} "
        f"rss MiB idle/peak={r['rss_kib']['idle'] / 1024:.1f}/{r['rss_kib']['peak'] / 1024:.1f}"
        + (" [" + "; ".join(flags) + "]" if flags else ""))


def fmt_alloc(engine, r):
    lat = r["alloc_latency_ms"]
    log(f"{engine:<12} alloc conc={r['concurrency']} {r['allocations_per_s']}/s ({r['allocations']} in {r['secs']} s) "
        f"p50/p99={lat['p50']}/{lat['p99']} ms failed={r['failed']} {r['failures'] or ''} "
        f"retrans={r['retransmissions']} cpu% server={r['cpu_pct']['server']} client={r['cpu_pct']['client']} "
        f"server_us/alloc={r['server_us_per_allocation']} rss MiB peak={r['rss_kib']['peak'] / 1024:.1f}"
        + (f" [{len(r['server_log_problems'])} server log problems]" if r.get("server_log_problems") else "")
        + (f" [SERVER DIED (exit {r['server_died']})]" if r.get("server_died") is not None else ""))


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def clean(r):
    return (r["loss_pct"] is not None and r["loss_pct"] < LOSS_OK and not r.get("uclient_exit")
            and r["sent"] is not None and r["sent"] >= r["sessions"] * r["messages_per_session"])


def summary(engines, results, repeat):
    def num(v, spec=".0f"):
        return "—" if v is None else format(v, spec)

    log(f"\nmedians over {repeat} run(s); CPU: 100 % = one core, transmit phase = uclient's connect line to its exit; "
        f"clean = loss < {LOSS_OK} % and every message sent")
    log("| server | sessions × interval | offered msg/s each way | sent / received | loss % "
        "| relayed packets/s (peak 1 s) | RTT avg / max (ms) "
        "| server CPU % (transmit phase / peak 1 s) | server CPU µs per relayed packet | uclient CPU % | peer CPU % "
        "| RSS idle / peak (MiB) "
        "| clean runs |")
    log("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    relay = [r for r in results if r["kind"] == "relay"]
    for engine in engines:
        for key in sorted({(r["sessions"], r["interval_ms"]) for r in relay if r["engine"] == engine},
                          key=lambda k: (k[0] * 1000 / k[1], k[0])):
            rows = [r for r in relay if r["engine"] == engine and (r["sessions"], r["interval_ms"]) == key]
            med = lambda f: median([f(r) for r in rows])  # noqa: E731
            log(f"| {engine} | {key[0]} × {key[1]} ms | {round(key[0] * 1000 / key[1])} "
                f"| {num(med(lambda r: r['sent']))} / {num(med(lambda r: r['received']))} "
                f"| {num(med(lambda r: r['loss_pct']), '.2f')} | {num(med(lambda r: r['relayed_per_s_peak']))} "
                f"| {num(med(lambda r: r['rtt_ms']['avg'] if r['rtt_ms'] else None), '.2f')} / "
                f"{num(med(lambda r: r['rtt_ms']['max'] if r['rtt_ms'] else None))} "
                f"| {num(med(lambda r: r['cpu_pct']['server']))} / {num(med(lambda r: r['cpu_pct']['server_peak_1s']))} "
                f"| {num(med(lambda r: r['server_us_per_relayed_packet']), '.1f')} "
                f"| {num(med(lambda r: r['cpu_pct']['uclient']))} | {num(med(lambda r: r['cpu_pct']['peer']))} "
                f"| {med(lambda r: r['rss_kib']['idle']) / 1024:.0f} / {med(lambda r: r['rss_kib']['peak']) / 1024:.0f} "
                f"| {sum(map(clean, rows))}/{len(rows)} |")
    log("largest step with loss < 0.1 % (median) and every message sent, by offered rate:")
    for engine in engines:
        keys = sorted({(r["sessions"], r["interval_ms"]) for r in relay if r["engine"] == engine},
                      key=lambda k: (k[0] * 1000 / k[1], k[0]))
        verdict = {}
        for key in keys:
            rows = [r for r in relay if r["engine"] == engine and (r["sessions"], r["interval_ms"]) == key]
            loss = median([r["loss_pct"] for r in rows])
            verdict[key] = (loss is not None and loss < LOSS_OK
                            and 2 * sum(r["sent"] is not None and r["sent"] >= r["sessions"] * r["messages_per_session"]
                                        for r in rows) > len(rows))
        good = [k for k in keys if verdict[k]]
        best = max(good, key=lambda k: k[0] / k[1]) if good else None
        log(f"  {engine:<12} "
            + (f"{best[0]} × {best[1]} ms = {round(best[0] * 1000 / best[1])} msg/s each way" if best else "none")
            + ("; " + ", ".join(f"{k[0]}×{k[1]}: {'ok' if verdict[k] else 'FAIL'}" for k in keys) if keys
               else " (no step ran)"))
    alloc = [r for r in results if r["kind"] == "alloc"]
    if alloc:
        log("| server | concurrency | allocations/s | latency p50 / p99 (ms) | failed | server CPU % "
            "| server CPU µs per allocation | client CPU % | RSS peak (MiB) | runs |")
        log("|---|---|---|---|---|---|---|---|---|---|")
        for engine in engines:
            rows = [r for r in alloc if r["engine"] == engine]
            if not rows:
                continue
            med = lambda f: median([f(r) for r in rows])  # noqa: E731
            log(f"| {engine} | {rows[0]['concurrency']} | {num(med(lambda r: r['allocations_per_s']))} "
                f"| {num(med(lambda r: r['alloc_latency_ms']['p50']), '.1f')} / "
                f"{num(med(lambda r: r['alloc_latency_ms']['p99']), '.1f')} "
                f"| {num(med(lambda r: r['failed']))} | {num(med(lambda r: r['cpu_pct']['server']))} "
                f"| {num(med(lambda r: r['server_us_per_allocation']), '.0f')} "
                f"| {num(med(lambda r: r['cpu_pct']['client']))} "
                f"| {med(lambda r: r['rss_kib']['peak']) / 1024:.0f} | {len(rows)} |")


# ---------------------------------------------------------------- main

def versions():
    out = {}
    r = subprocess.run(["turnserver", "--version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=10)
    out["coturn"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else None
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "coturn"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=10)
    out["coturn_deb"] = r.stdout.strip() or None
    return out


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_alloc_client":
        return alloc_client_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="coturn,switchboard", help="comma-separated: coturn, switchboard "
                    "(run in this order per step)")
    ap.add_argument("--auth", choices=["static", "secret"], default="static",
                    help="long-term credentials of one user (static) or TURN REST credentials (secret)")
    ap.add_argument("--transport", choices=["udp", "tcp"], default="udp",
                    help="uclient to server over UDP, or TCP (uclient -t); the relay is UDP either way")
    ap.add_argument("--steps", default="50:20,300:20,50:1,75:1,100:1",
                    help="relay steps M:Z = M sessions, one message every Z ms each; empty for none")
    ap.add_argument("--secs", type=float, default=15, help="seconds of messages per session (<= 60)")
    ap.add_argument("--alloc-conc", type=int, default=50, help="concurrent clients of the allocation test")
    ap.add_argument("--alloc-secs", type=float, default=10, help="seconds of the allocation test; 0 for none")
    ap.add_argument("--repeat", type=int, default=1, help="run everything this many times (medians reported)")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-runs of a step disturbed by other load (other CPU > %d %%%%)" % OTHER_BUSY_PCT)
    ap.add_argument("--quiet-wait", type=float, default=900,
                    help="max seconds to wait for cargo/rustc to end and the machine to idle before a step")
    ap.add_argument("--json", help="write the raw figures here (default benches/load/results/turn-<date>-<time>.json)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/switchboard as it is")
    a = ap.parse_args()
    # SIGTERM ends the run like Ctrl-C: the current step's processes are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"coturn", "switchboard"}:
        sys.exit(f"unknown engine in {engines}")
    steps = []
    for s in (x for x in a.steps.split(",") if x.strip()):
        m, z = (int(v) for v in s.split(":"))
        if not (1 <= m <= 2000 and 1 <= z <= 1000):
            sys.exit(f"step {s}: 1-2000 sessions, 1-1000 ms")
        steps.append((m, z))
    if not 0 < a.secs <= 60 or not 0 <= a.alloc_secs <= 60:
        sys.exit("keep --secs and --alloc-secs at 60 s or less")
    for tool in ("turnutils_uclient", "turnutils_peer", "turnserver", "cc"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing (apt-get install coturn gcc)")
    if "switchboard" in engines and not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "switchboard"], cwd=ROOT, check=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True).stdout.split("\n")
    build = {"commit": git, "modified": [line[3:] for line in dirty if line.strip()],
             "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(BINARY)))
             if os.path.exists(BINARY) else None}
    info = {"versions": versions(), "build": build}
    log(f"turn bench: {info}")
    json_path = a.json or os.path.join(RESULTS, time.strftime("turn-%Y-%m-%d-%H%M%S.json"))
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="switchboard-turnbench.")
    results, failures = [], []
    settings = {"auth": a.auth, "transport": a.transport, "secs": a.secs, "msg_len": MSG_LEN,
                "relay_ports": RELAY_PORTS, "coturn_relay_threads": RELAY_THREADS, "realm": REALM,
                "alloc_conc": a.alloc_conc, "alloc_secs": a.alloc_secs, "repeat": a.repeat}

    def save():
        with open(json_path, "w") as f:
            json.dump({"command": " ".join(sys.argv), "started": started, "settings": settings, **info,
                       "results": results, "failures": failures}, f, indent=1)

    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        shim = build_shim(tmp)
        plan = [("relay", s) for s in steps] + ([("alloc", None)] if a.alloc_secs > 0 else [])
        for rep in range(a.repeat):
            for kind, step in plan:
                for engine in engines:
                    r = None
                    for attempt in range(a.retries + 1):
                        busy_before = wait_quiet(a.quiet_wait)
                        try:
                            if kind == "relay":
                                r = step_relay(a, engine, step[0], step[1], tmp, shim)
                            else:
                                r = step_alloc(a, engine, tmp)
                        except StepError as error:
                            what = f"{step[0]}x{step[1]}" if step else "alloc"
                            log(f"{engine:<12} {what} STEP FAILED: {error}\n    "
                                + str(error.details or "")[-1200:].replace("\n", "\n    "))
                            failures.append({"engine": engine, "kind": kind, "step": step, "repeat": rep + 1,
                                             "error": str(error), "details": error.details})
                            r = None
                            break
                        r.update({"engine": engine, "kind": kind, "repeat": rep + 1, "attempt": attempt + 1})
                        builds = compiles_running()
                        r["busy_during_step"] = bool(busy_before or builds
                                                     or r["cpu_pct"].get("other", 0) > OTHER_BUSY_PCT)
                        if not r["busy_during_step"] or attempt == a.retries:
                            break
                        log(f"  {engine} {kind} {step or ''}: disturbed by other load (other CPU "
                            f"{r['cpu_pct'].get('other')} %, cargo/rustc {len(builds)}), running the step again")
                    if r is None:
                        continue
                    results.append(r)
                    (fmt_relay if kind == "relay" else fmt_alloc)(engine, r)
                    save()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        save()
    summary(engines, results, a.repeat)
    if failures:
        log(f"{len(failures)} step(s) failed: " + "; ".join(f"{f['engine']} {f['kind']}: {f['error']}" for f in failures))
    log(f"results: {os.path.relpath(json_path, ROOT) if json_path.startswith(ROOT) else json_path}")


if __name__ == "__main__":
    main()
