#!/usr/bin/env python3
"""RTP relay capacity of switchboard and of rtpengine, side by side, with the same load generator.

  benches/load/media.py --calls 250,500,1000,2000 [--secs 10] [--record] [--record-calls 100,250]
                        [--engines switchboard,rtpengine] [--repeat 3] [--json FILE] [--rate 200]

The reference run (docs/benchmarks.md) was made with:
  benches/load/media.py --calls 250,500,750,1000,1250,1500,2000 --record-calls 100,250,500,750,1000 \
      --secs 15 --record --repeat 3 --json media.json

For every N in --calls, each engine in turn gets N calls: the engines alternate, one at a time,
never together. ../shared/peers/udp/rtpblast then pushes G.711-like RTP through every call in
both directions: 172-byte packets every 20 ms per stream, 2 streams per call (100 pps per call).
Both engines get the same rtpblast, settings, SDP and port layout. Only call set-up differs:

* rtpengine 10.5 (userspace, --table=-1): started per step by ../shared/peers/rtpengine/run.sh
  with 2 threads. Calls are set up over its ng protocol with ng.py (offer, answer,
  "ICE": "remove"), as ../shared/peers/rtpengine/bench_rtpengine.py does. They are deleted and
  rtpengine is stopped after the step.
* switchboard: a fresh `target/release/switchboard serve` per step (temp dir, SQLite) with 2
  media workers. The calls are real SIP calls through the B2BUA, made by a small SIP UA in this
  file (plain UDP sockets):
  - the callee (7002) REGISTERs with digest auth;
  - the caller (7001) sends INVITE, takes the 401, ACKs, re-INVITEs with credentials, gets
    180/200 and ACKs;
  - the callee answers with 180, then 200 + SDP.
  Calls are set up at --rate per second and hung up with BYE.
* switchboard-rec (with --record, or named in --engines; its steps are --record-calls if given):
  the same, with record_calls set on the callee extension, so every call is also written to a
  stereo WAV file (the files are counted and opened after the server stops).

Each stream sends one packet right after its call is answered and another 0.1 s later, as phones
start sending at once. That way each relay latches on the generator's ports and adopts the
generator's SSRCs before rtpblast starts. One packet is not enough for switchboard:
- a packet that arrives before its media worker has bound the call's ports is lost;
- it sends under its own SSRC to a leg it sent an RTCP report to before any RTP. Its first
  report is due 1.25-3.75 s after set-up.
Packets lost that way are reported as "early packets lost at set-up".

Generator ports are A_i = 4000 + 4i (caller) and B_i = 4002 + 4i (callee). The odd ports stay
unbound, so switchboard's RTCP reports (sent to RTP port + 1) never reach the generator. Both
relays use media ports 20000-32767, which allows at most 3000 calls.

Each engine gets one line per step with:
- streams, and sent and received packets/s;
- loss;
- rtpblast's one-way latency p50/p99/max (us: generator -> relay -> generator, on loopback);
- CPU of the relay and of rtpblast (100 % = one core, ../shared/peers/lib/cpumon.py);
- CPU of everything else on the box (from /proc/stat: the harness, kernel softirq, other
  users' work);
- the relay's CPU time per delivered packet;
- the relay's resident memory: VmRSS idle before the calls, the peak sampled during the step,
  and (peak - idle) / N per call;
- call set-up rate and failures.

At the end comes a markdown table of the medians over the --repeat runs of each step, and each
engine's capacity: the largest N where most runs had loss < 0.1 % and p99 < 1 ms, with every
call set up and rtpblast keeping up with 100 pps per call. The steps above that N show where it
breaks. --json FILE writes the raw figures, including the server's /metrics counters and the
build (commit, modified files).

Everything is on 127.0.0.1, every step is bounded in time, and only the processes started here
are stopped (by PID). The relay and rtpblast share the machine's cores, as in ../shared/peers.
Before each step the harness waits (at most --quiet-wait s) until no cargo/rustc runs and the
rest of the machine is idle. A step during which other processes used more than 15 % of a core
is run again (--retries) and flagged if it stays disturbed.
"""

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.path.join(ROOT, "target", "release", "switchboard")
PEERS = os.environ.get("SWITCHBOARD_PEERS", os.path.join(os.path.dirname(ROOT), "shared", "peers"))
RTPBLAST = os.path.join(PEERS, "udp", "rtpblast")
CPUMON = os.path.join(PEERS, "lib", "cpumon.py")
RTPENGINE_RUN = os.path.join(PEERS, "rtpengine", "run.sh")
RTPENGINE_PIDFILE = os.path.join(PEERS, "rtpengine", "run", "rtpengine.pid")
sys.dont_write_bytecode = True   # nothing written into the peers' tree
sys.path.insert(0, os.path.join(PEERS, "rtpengine"))
from ng import NG, media_port, sdp as make_sdp  # noqa: E402  (the peers' ng client and SDP)
from loadlib import cpu_times, log, rss_kib, wait_quiet  # noqa: E402

ADMIN_PASSWORD = "bench-admin-password"
CALLER, CALLEE = "7001", "7002"
GEN_BASE = 4000            # generator ports: A_i = GEN_BASE + 4i, B_i = GEN_BASE + 4i + 2
RELAY_PORTS = (20000, 32767)  # both relays' media range (run.sh's for rtpengine)
MAX_CALLS = 3000
WORKERS = 2                # switchboard media workers = rtpengine threads
PACKET = 172
LOSS_OK, P99_OK_US = 0.1, 1000
OTHER_BUSY_PCT = 15        # CPU % of other processes that flags a step as disturbed
REPRIME = 0.1              # s after the answer: the second priming packet of each stream


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gen_ports(i):
    return GEN_BASE + 4 * i, GEN_BASE + 4 * i + 2


def generator_ports_free(calls):
    """No UDP socket bound in the generator's port range (from /proc/net/udp)."""
    lo, hi = GEN_BASE, gen_ports(calls - 1)[1]
    busy = []
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            port = int(line.split()[1].split(":")[1], 16)
            if lo <= port <= hi:
                busy.append(port)
    return busy


# ---------------------------------------------------------------- RTP: priming and rtpblast

def rtp_packet(ssrc):
    header = struct.pack("!BBHII", 0x80, 0, 0, 0, ssrc)
    return header + struct.pack("!Q", time.monotonic_ns()) + bytes(PACKET - 20)


def prime(i, x, y):
    """One packet per stream of call i from the generator's ports, with rtpblast's SSRCs
    (line index + 1): A_i -> x (caller's leg), B_i -> y (callee's leg)."""
    a, b = gen_ports(i)
    for port, dest, ssrc in ((a, x, 2 * i + 1), (b, y, 2 * i + 2)):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            s.sendto(rtp_packet(ssrc), ("127.0.0.1", dest))


class RssSampler(threading.Thread):
    def __init__(self, pid, period=0.25):
        super().__init__(daemon=True)
        self.pid, self.period, self.samples = pid, period, []
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            self.samples.append(rss_kib(self.pid))
            self.stop_event.wait(self.period)

    def stop(self):
        self.stop_event.set()
        self.join()
        return max(self.samples or [0]), (sum(self.samples) // len(self.samples) if self.samples else 0)


def blast(work, streams, relay_pid, secs):
    """rtpblast through the relay under cpumon; returns rtpblast's figures plus CPU and RSS."""
    path = os.path.join(work, "streams.txt")
    with open(path, "w") as f:
        f.write("".join(f"{local} {dest}\n" for local, dest in streams))
    cj = os.path.join(work, "cpu.json")
    sampler = RssSampler(relay_pid)
    busy0, total0 = cpu_times()
    sampler.start()
    try:
        r = subprocess.run([sys.executable, CPUMON, "--watch", f"relay={relay_pid}", "--json", cj,
                            "--", RTPBLAST, "-c", path, "-d", str(secs)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=secs + 30)
    finally:
        rss_peak, rss_mean = sampler.stop()
    busy1, total1 = cpu_times()
    if r.returncode != 0 or not r.stdout.strip():
        raise StepError(f"rtpblast failed ({r.returncode})", r.stderr[-1000:])
    res = json.loads(r.stdout)
    cpu = json.load(open(cj))["cpu_pct"]
    machine = 100 * (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count()
    res["cpu_pct"] = {"relay": cpu["relay"], "rtpblast": cpu["cmd"],
                      "other": round(max(0.0, machine - cpu["relay"] - cpu["cmd"]), 1)}
    res["rss_kib"] = {"peak": rss_peak, "mean": rss_mean}
    # Relay CPU time per packet it delivered (us): the cost per packet, comparable across N.
    res["relay_us_per_packet"] = round(cpu["relay"] / 100 * 1e6 / res["pps_received"], 2) if res["pps_received"] else None
    return res


# ---------------------------------------------------------------- switchboard server and API

class Server:
    """switchboard serve in a temp dir, SQLite, SIP over UDP, media on RELAY_PORTS, loopback."""

    def __init__(self, work):
        self.work = work
        self.sip_port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        full.update({
            "SWITCHBOARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SWITCHBOARD_HTTP__BIND": "127.0.0.1:0",
            "SWITCHBOARD_SIP__UDP_BIND": f"127.0.0.1:{self.sip_port}",
            "SWITCHBOARD_SIP__TCP_BIND": "127.0.0.1:0",
            "SWITCHBOARD_SIP__TLS_BIND": "127.0.0.1:0",
            "SWITCHBOARD_HTTP__TLS_BIND": "127.0.0.1:0",
            "SWITCHBOARD_SIP__MAX_TRANSACTIONS": "1000000",
            "SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS": "127.0.0.1",
            "SWITCHBOARD_MEDIA__BIND_IP": "127.0.0.1",
            "SWITCHBOARD_MEDIA__RTP_PORT_MIN": str(RELAY_PORTS[0]),
            "SWITCHBOARD_MEDIA__RTP_PORT_MAX": str(RELAY_PORTS[1]),
            "SWITCHBOARD_MEDIA__WORKERS": str(WORKERS),
            "SWITCHBOARD_MEDIA__MAX_CALLS": "100000",
            "SWITCHBOARD_MEDIA__MAX_CALLS_PER_TENANT": "100000",
            "SWITCHBOARD_MEDIA__MAX_CALLS_PER_SECOND": "0",
            "SWITCHBOARD_MEDIA__MAX_CALLS_PER_SECOND_PER_TENANT": "0",
            "SWITCHBOARD_MEDIA__INACTIVITY_TIMEOUT": "3600s",
            # This benchmark measures calls; TURN (port 3478) stays off.
            "SWITCHBOARD_TURN__ENABLED": "false",
            "SWITCHBOARD_LOG__LEVEL": "warn",
        })
        self.out_path = os.path.join(work, "server.out")
        self.err_path = os.path.join(work, "server.err")
        self.out, self.err = open(self.out_path, "w+"), open(self.err_path, "w")
        self.proc = subprocess.Popen([BINARY, "serve"], cwd=work, env=full, stdout=self.out, stderr=self.err)
        self.pid = self.proc.pid
        self.http_port = None
        deadline = time.time() + 30
        while time.time() < deadline:
            self.out.seek(0)
            text = self.out.read()
            m = re.search(r"HTTP listening on [^\s]*:(\d+)", text)
            if m and "SIP: UDP listening" in text:
                self.http_port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        sys.exit("switchboard did not start: " + open(self.err_path).read()[-2000:])

    def problems(self):
        """WARN/ERROR lines the server logged (log level warn)."""
        self.err.flush()
        lines = []
        for path in (self.err_path, self.out_path):
            with open(path, errors="replace") as f:
                for line in f:
                    line = re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip()
                    if re.search(r"\b(WARN|ERROR)\b", line) and "self-signed certificate" not in line:
                        lines.append(line)
        return lines

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Api:
    """The REST API over one keep-alive connection."""

    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.token = None
        self.token = self.request("POST", "/api/v1/auth/login",
                                  {"email": "admin@localhost", "password": ADMIN_PASSWORD})["access_token"]

    def request(self, method, path, body=None):
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            sys.exit(f"{method} {path}: {response.status} {data[:300]!r}")
        return json.loads(data) if data else None

    def metrics(self):
        """switchboard_media_* and switchboard_recording* values from /metrics, summed by name."""
        self.conn.request("GET", "/metrics")
        response = self.conn.getresponse()
        text = response.read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("switchboard_media") or line.startswith("switchboard_recording") \
                    or line.startswith("switchboard_sip_overloaded"):
                name, _, value = line.rpartition(" ")
                name = name.split("{")[0].removesuffix("_total")
                try:
                    out[name] = out.get(name, 0) + float(value)
                except ValueError:
                    pass
        return out


# ---------------------------------------------------------------- a minimal SIP UA over UDP

COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length",
           "c": "content-type", "k": "supported"}


class Msg:
    def __init__(self, raw):
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        self.start = lines[0]
        self.headers = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:
                name, value = self.headers[-1]
                self.headers[-1] = (name, value + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            name = name.strip().lower()
            self.headers.append((COMPACT.get(name, name), value.strip()))
        self.body = body.decode(errors="replace")
        parts = self.start.split(" ", 2)
        if parts[0] == "SIP/2.0":
            self.status, self.method = int(parts[1]), None
        else:
            self.status, self.method = None, parts[0]

    def get(self, name, default=""):
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def all(self, name):
        return [v for n, v in self.headers if n == name]

    def cseq(self):
        num, _, method = self.get("cseq").partition(" ")
        return int(num or 0), method.strip()

    def tag(self, header):
        m = re.search(r";\s*tag=([^;>\s]+)", self.get(header))
        return m.group(1) if m else None


def uri_of(header_value):
    m = re.search(r"<([^>]+)>", header_value)
    return m.group(1) if m else header_value.split(";")[0].strip()


def token():
    return "%016x" % random.getrandbits(64)


def build(start, headers, body=""):
    lines = [start] + [f"{n}: {v}" for n, v in headers]
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def digest(challenge, method, uri, user, password):
    """Authorization for a WWW-Authenticate Digest challenge (RFC 2617 / 8760, qop=auth)."""
    params = {k: q or t for k, q, t in re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]+))', challenge)}
    algorithm = params.get("algorithm", "MD5")
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm.upper()]
    H = lambda s: h(s.encode()).hexdigest()  # noqa: E731
    ha1 = H(f"{user}:{params['realm']}:{password}")
    ha2 = H(f"{method}:{uri}")
    fields = [f'username="{user}"', f'realm="{params["realm"]}"', f'nonce="{params["nonce"]}"', f'uri="{uri}"',
              f"algorithm={algorithm}"]
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if "auth" in qops:
        cnonce, nc = token(), "00000001"
        response = H(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
        fields += [f'cnonce="{cnonce}"', f"nc={nc}", "qop=auth"]
    else:
        response = H(f"{ha1}:{params['nonce']}:{ha2}")
    fields.append(f'response="{response}"')
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


def pick_challenge(msg):
    challenges = msg.all("www-authenticate")
    for wanted in ("MD5", "SHA-256"):
        for c in challenges:
            alg = re.search(r"algorithm=\"?([\w-]+)", c)
            if (alg.group(1) if alg else "MD5").upper() == wanted:
                return c
    raise RuntimeError(f"no usable challenge in {challenges}")


class StepError(Exception):
    """A step that could not be run (its details go to the results)."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


class Call:
    __slots__ = ("i", "cid", "ftag", "state", "invite", "sent_at", "retx", "got_response", "to_tag",
                 "contact", "routes", "x", "ack", "bye", "status", "started", "answered")

    def __init__(self, i):
        self.i, self.cid, self.ftag = i, f"mb-{token()}-{i}", token()[:10]
        self.state, self.invite, self.sent_at, self.retx = "new", None, 0.0, 0.5
        self.got_response, self.to_tag, self.contact, self.routes = False, None, None, []
        self.x, self.ack, self.bye, self.status, self.started, self.answered = None, None, None, None, 0.0, 0.0


class SipLoad:
    """Caller 7001 and callee 7002 on two UDP sockets; sets up and tears down N calls."""

    def __init__(self, server_port):
        self.server = ("127.0.0.1", server_port)
        self.caller = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.callee = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (self.caller, self.callee):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        self.caller_port = self.caller.getsockname()[1]
        self.callee_port = self.callee.getsockname()[1]
        self.target = f"sip:{CALLEE}@127.0.0.1:{server_port}"
        self.calls, self.by_cid = [], {}
        self.b_calls = {}     # B-leg Call-ID -> {"i", "y", "responses"}
        self.y = {}           # call index -> the server's callee-facing port
        self.reg_state = None
        self.errors = {}      # what went wrong, counted
        self.stray = 0        # requests the UA did not expect (e.g. a BYE from the server)
        self.on_answer = None
        self.later = []       # (when, function): the second priming packet of each call

    def close(self):
        self.caller.close()
        self.callee.close()

    def count(self, what):
        self.errors[what] = self.errors.get(what, 0) + 1

    def via(self, port):
        return f"SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{token()};rport"

    # -- I/O

    def pump(self, timeout):
        now = time.time()
        while self.later and self.later[0][0] <= now:
            self.later.pop(0)[1]()
        r, _, _ = select.select([self.caller, self.callee], [], [], max(0.0, timeout))
        for sock in r:
            for _ in range(1000):
                try:
                    data, _ = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                try:
                    msg = Msg(data)
                except (ValueError, IndexError):
                    self.count("unparsable message")
                    continue
                if sock is self.caller:
                    self.on_caller(msg)
                else:
                    self.on_callee(msg)

    def send(self, sock, data):
        sock.sendto(data, self.server)

    # -- the callee: REGISTER, then answer INVITEs

    def register(self, password):
        cid, ftag, cseq = f"reg-{token()}", token()[:10], 1
        uri = f"sip:127.0.0.1:{self.server[1]}"

        def request(auth=None):
            headers = [("Via", self.via(self.callee_port)), ("Max-Forwards", "70"),
                       ("From", f"<sip:{CALLEE}@127.0.0.1>;tag={ftag}"), ("To", f"<sip:{CALLEE}@127.0.0.1>"),
                       ("Call-ID", cid), ("CSeq", f"{cseq} REGISTER"),
                       ("Contact", f"<sip:{CALLEE}@127.0.0.1:{self.callee_port}>"), ("Expires", "3600")]
            if auth:
                headers.append(("Authorization", auth))
            return build(f"REGISTER {uri} SIP/2.0", headers)

        self.reg_state = None
        data = request()
        self.send(self.callee, data)
        trace = [data.decode()]
        deadline, resend = time.time() + 10, time.time() + 0.5
        while time.time() < deadline:
            self.pump(0.05)
            if isinstance(self.reg_state, Msg):
                msg, self.reg_state = self.reg_state, None
                trace.append(f"<- {msg.start} (CSeq {msg.get('cseq')}) {msg.all('www-authenticate')}")
                if msg.status == 401 and cseq == 1:
                    cseq = 2
                    data = request(digest(pick_challenge(msg), "REGISTER", uri, CALLEE, password))
                    self.send(self.callee, data)
                    trace.append(data.decode())
                elif msg.status == 200 and cseq == 2:
                    return
                elif msg.status >= 300 and msg.cseq()[0] == cseq:
                    raise StepError(f"REGISTER failed: {msg.start}", trace)
            if time.time() > resend:
                self.send(self.callee, data)
                trace.append("(retransmitted)")
                resend = time.time() + 1
        raise StepError("REGISTER timed out", trace)

    def respond(self, req, code, reason, to_tag=None, extra=(), body=""):
        headers = [("Via", v) for v in req.all("via")]
        to = req.get("to")
        if to_tag and ";tag=" not in to:
            to += f";tag={to_tag}"
        headers += [("From", req.get("from")), ("To", to), ("Call-ID", req.get("call-id")),
                    ("CSeq", req.get("cseq"))] + list(extra)
        return build(f"SIP/2.0 {code} {reason}", headers, body)

    def on_callee(self, msg):
        if msg.status is not None:
            if msg.cseq()[1] == "REGISTER":
                self.reg_state = msg
            return
        cid = msg.get("call-id")
        if msg.method == "INVITE":
            known = self.b_calls.get(cid)
            if known:   # a retransmission: the same answers again
                for data in known["responses"]:
                    self.send(self.callee, data)
                return
            m = re.search(r"^o=\S+ (\d+) ", msg.body, re.M)
            if not m:
                self.count("callee: INVITE without o= line")
                self.send(self.callee, self.respond(msg, 488, "Not Acceptable Here"))
                return
            i = int(m.group(1)) - 1
            self.y[i] = media_port(msg.body)
            tag = token()[:10]
            contact = ("Contact", f"<sip:{CALLEE}@127.0.0.1:{self.callee_port}>")
            ringing = self.respond(msg, 180, "Ringing", tag, [contact])
            ok = self.respond(msg, 200, "OK", tag, [contact, ("Content-Type", "application/sdp")],
                              make_sdp(gen_ports(i)[1], i + 1))
            self.b_calls[cid] = {"i": i, "responses": [ringing, ok]}
            self.send(self.callee, ringing)
            self.send(self.callee, ok)
        elif msg.method == "ACK":
            pass
        elif msg.method in ("BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE"):
            self.send(self.callee, self.respond(msg, 200, "OK"))
        else:
            self.send(self.callee, self.respond(msg, 405, "Method Not Allowed"))

    # -- the caller

    def invite(self, call, cseq, auth=None):
        headers = [("Via", self.via(self.caller_port)), ("Max-Forwards", "70"),
                   ("From", f'"Bench" <sip:{CALLER}@127.0.0.1>;tag={call.ftag}'),
                   ("To", f"<sip:{CALLEE}@127.0.0.1>"), ("Call-ID", call.cid), ("CSeq", f"{cseq} INVITE"),
                   ("Contact", f"<sip:{CALLER}@127.0.0.1:{self.caller_port}>"),
                   ("Content-Type", "application/sdp")]
        if auth:
            headers.append(("Authorization", auth))
        call.invite = build(f"INVITE {self.target} SIP/2.0", headers, make_sdp(gen_ports(call.i)[0], call.i + 1))
        call.got_response, call.retx, call.sent_at = False, 0.5, time.time()
        self.send(self.caller, call.invite)

    def on_caller(self, msg):
        if msg.status is None:
            # The server calling us (a BYE on inactivity, an OPTIONS): answer, and count it.
            self.stray += 1
            self.count(f"caller got {msg.method}")
            if msg.method != "ACK":
                self.send(self.caller, self.respond(msg, 200, "OK"))
            return
        call = self.by_cid.get(msg.get("call-id"))
        if call is None:
            return
        num, method = msg.cseq()
        call.got_response = True
        if method == "BYE":
            if msg.status >= 200 and call.state == "bye":
                call.state = "done" if msg.status == 200 else "bye-failed"
                if msg.status != 200:
                    self.count(f"BYE {msg.status}")
            return
        if method != "INVITE" or msg.status < 200:
            return
        if msg.status >= 300:
            # ACK any final non-2xx (same branch as the INVITE).
            via = re.search(r"^Via: (.*)$", call.invite.decode(), re.M).group(1)
            ack = build(f"ACK {self.target} SIP/2.0",
                        [("Via", via), ("Max-Forwards", "70"),
                         ("From", f'"Bench" <sip:{CALLER}@127.0.0.1>;tag={call.ftag}'),
                         ("To", msg.get("to")), ("Call-ID", call.cid), ("CSeq", f"{num} ACK")])
            self.send(self.caller, ack)
            if msg.status in (401, 407) and num == 1 and call.state == "inv1":
                call.state = "inv2"
                self.invite(call, 2, digest(pick_challenge(msg), "INVITE", self.target, CALLER,
                                            f"password-{CALLER}"))
            elif call.state in ("inv1", "inv2") and num == (1 if call.state == "inv1" else 2):
                call.state, call.status = "failed", msg.status
                self.count(f"INVITE {msg.status} {msg.start.split(' ', 2)[-1]}")
            return
        # 2xx: ACK it (again, if it is a retransmission).
        if call.ack is not None:
            self.send(self.caller, call.ack)
            return
        call.to_tag = msg.tag("to")
        call.contact = uri_of(msg.get("contact")) or self.target
        call.routes = list(reversed([r for v in msg.all("record-route") for r in v.split(",")]))
        try:
            call.x = media_port(msg.body)
        except ValueError:
            self.count("200 without SDP")
        headers = [("Via", self.via(self.caller_port)), ("Max-Forwards", "70")]
        headers += [("Route", r.strip()) for r in call.routes]
        headers += [("From", f'"Bench" <sip:{CALLER}@127.0.0.1>;tag={call.ftag}'), ("To", msg.get("to")),
                    ("Call-ID", call.cid), ("CSeq", f"{num} ACK")]
        call.ack = build(f"ACK {call.contact} SIP/2.0", headers)
        self.send(self.caller, call.ack)
        call.answered = time.time()
        if call.x is None or call.i not in self.y:
            call.state = "failed"
            self.count("answered without media ports")
            return
        call.state = "up"
        if self.on_answer:
            self.on_answer(call.i, call.x, self.y[call.i])

    def setup(self, n, rate, window=200, timeout=30):
        """Sets up n calls, starting them at `rate` per second (at most `window` pending)."""
        self.calls = [Call(i) for i in range(n)]
        self.by_cid = {c.cid: c for c in self.calls}
        pending, nxt, t0 = set(), 0, time.time()
        deadline = t0 + n / rate + timeout
        while (nxt < n or pending or self.later) and time.time() < deadline:
            now = time.time()
            while nxt < n and len(pending) < window and now >= t0 + nxt / rate:
                call = self.calls[nxt]
                call.state, call.started = "inv1", now
                self.invite(call, 1)
                pending.add(call)
                nxt += 1
            wake = t0 + nxt / rate if nxt < n and len(pending) < window else now + 0.05
            self.pump(min(wake - time.time(), 0.05))
            now = time.time()
            for call in list(pending):
                if call.state not in ("inv1", "inv2"):
                    pending.discard(call)
                elif now - call.started > timeout:
                    call.state = "failed"
                    self.count("INVITE timed out")
                    pending.discard(call)
                elif not call.got_response and now - call.sent_at > call.retx:
                    self.send(self.caller, call.invite)   # INVITE retransmission (timer A)
                    call.sent_at, call.retx = now, call.retx * 2
                    self.count("INVITE retransmitted")
        for call in self.calls:
            if call.state in ("new", "inv1", "inv2"):
                call.state = "failed"
                self.count("not set up before the step's deadline")
        wall = time.time() - t0
        up = [c for c in self.calls if c.state == "up"]
        return up, wall

    def teardown(self, rate=1000, window=300, timeout=20):
        """BYE from the caller for every call that is up; returns (ok, wall s)."""
        todo = [c for c in self.calls if c.state == "up"]
        pending, nxt, t0 = set(), 0, time.time()
        deadline = t0 + len(todo) / rate + timeout
        while (nxt < len(todo) or pending) and time.time() < deadline:
            now = time.time()
            while nxt < len(todo) and len(pending) < window and now >= t0 + nxt / rate:
                call = todo[nxt]
                headers = [("Via", self.via(self.caller_port)), ("Max-Forwards", "70")]
                headers += [("Route", r.strip()) for r in call.routes]
                headers += [("From", f'"Bench" <sip:{CALLER}@127.0.0.1>;tag={call.ftag}'),
                            ("To", f"<sip:{CALLEE}@127.0.0.1>;tag={call.to_tag}"),
                            ("Call-ID", call.cid), ("CSeq", "3 BYE")]
                call.bye = build(f"BYE {call.contact} SIP/2.0", headers)
                call.state, call.got_response, call.sent_at, call.retx = "bye", False, now, 0.5
                self.send(self.caller, call.bye)
                pending.add(call)
                nxt += 1
            self.pump(0.01)
            now = time.time()
            for call in list(pending):
                if call.state != "bye":
                    pending.discard(call)
                elif not call.got_response and now - call.sent_at > call.retx:
                    self.send(self.caller, call.bye)
                    call.sent_at, call.retx = now, call.retx * 2
                    self.count("BYE retransmitted")
        ok = sum(1 for c in todo if c.state == "done")
        if ok < len(todo):
            self.count("BYE without 200")
        return ok, time.time() - t0


# ---------------------------------------------------------------- the steps

def streams_of(pairs):
    """rtpblast lines for calls given as (i, x, y): A_i -> x, B_i -> y (SSRC = line index + 1)."""
    lines = []
    for i, x, y in pairs:
        a, b = gen_ports(i)
        lines += [(a, x), (b, y)]
    return lines


def step_switchboard(a, calls, record, tmp):
    work = tempfile.mkdtemp(prefix="sw.", dir=tmp)
    server = Server(work)
    ua = None
    try:
        api = Api(server.http_port)
        for number, name in ((CALLER, "Caller"), (CALLEE, "Callee")):
            ext = api.request("POST", "/api/v1/extensions",
                              {"number": number, "display_name": name, "password": f"password-{number}"})
            if record and number == CALLEE:
                api.request("PATCH", f"/api/v1/extensions/{ext['id']}", {"record_calls": True})
        ua = SipLoad(server.sip_port)
        register_problems = []
        try:
            ua.register(f"password-{CALLEE}")
        except StepError as error:
            # Seen once (a 403 to the authenticated REGISTER on a fresh server): keep the
            # exchange and the server's log, and register again with a new Call-ID.
            register_problems.append({"error": str(error), "exchange": error.details,
                                      "server_log": open(server.err_path, errors="replace").read()[-4000:]})
            log(f"  {error}; registering again")
            ua.register(f"password-{CALLEE}")
        rss_idle = rss_kib(server.pid)
        pairs = []

        def answered(i, x, y):
            prime(i, x, y)
            ua.later.append((time.time() + REPRIME, lambda: prime(i, x, y)))
            pairs.append((i, x, y))
        ua.on_answer = answered
        up, setup_s = ua.setup(calls, a.rate)
        pairs.sort()
        if not pairs:
            raise StepError(f"switchboard: no call was set up: {ua.errors}", server.problems()[-5:])
        before = api.metrics()
        res_setup = {k: round(v) for k, v in sorted(before.items()) if k.endswith(("dropped", "sent", "forwarded"))}
        rustc = wait_quiet(60, exclude=(server.pid,))
        before = api.metrics()
        res = blast(work, streams_of(pairs), server.pid, a.secs)
        after = api.metrics()
        bye_ok, bye_s = ua.teardown()
        after_bye = api.metrics()
        res["server_counters"] = {k: round(after[k] - before.get(k, 0)) for k in sorted(after)
                                  if k.endswith(("forwarded", "dropped", "sent", "received", "failures",
                                                 "inactive", "completed", "errors", "overloaded"))}
        res["server_counters_at_setup"] = res_setup
        # 4 priming packets per call (2 per stream); those not forwarded nor dropped reached a
        # port the server had not bound yet (its media worker had not created the session).
        res["priming_packets_lost"] = 4 * len(pairs) - res_setup.get("switchboard_media_rtp_forwarded", 0) \
            - res_setup.get("switchboard_media_rtp_dropped", 0)
        res["server_gauges"] = {k: after[k] for k in ("switchboard_media_sessions", "switchboard_recordings_active")
                                if k in after}
        res["server_after_bye"] = {k: after_bye[k] for k in ("switchboard_media_sessions",
                                   "switchboard_recordings_active", "switchboard_recordings_completed",
                                   "switchboard_recording_write_errors", "switchboard_recording_packets_dropped")
                                   if k in after_bye}
        if record:
            rec_dir = os.path.join(work, "data", "recordings")
            files = [os.path.join(d, f) for d, _, fs in os.walk(rec_dir) for f in fs]
            res["recordings"] = {"files": len(files), "bytes": sum(os.path.getsize(f) for f in files)}
        res.update({"calls_set_up": len(up), "setup_per_s": round(len(up) / setup_s, 1),
                    "setup_errors": dict(ua.errors), "bye_ok": bye_ok, "bye_per_s": round(bye_ok / bye_s, 1),
                    "rss_idle_kib": rss_idle, "busy_during_step": rustc, "register_problems": register_problems})
        code = server.stop()
        res["server_exit"] = code
        res["server_log_problems"] = server.problems()[:20]
        if record:
            files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(work, "data", "recordings")) for f in fs]
            valid, seconds = 0, []
            for path in files:
                try:
                    with wave.open(path) as w:
                        valid += 1
                        seconds.append(w.getnframes() / w.getframerate())
                except (wave.Error, EOFError, OSError):
                    pass
            res["recordings_after_stop"] = {"files": len(files), "bytes": sum(os.path.getsize(f) for f in files),
                                            "valid_wav": valid,
                                            "seconds_min_max": [round(min(seconds), 1), round(max(seconds), 1)]
                                            if seconds else None}
        return res
    finally:
        if ua:
            ua.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def rtpengine_pid():
    try:
        pid = int(open(RTPENGINE_PIDFILE).read())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def step_rtpengine(a, calls, tmp):
    if rtpengine_pid():
        sys.exit("an rtpengine started by someone else is running (run/rtpengine.pid): not touching it")
    r = subprocess.run([RTPENGINE_RUN, "start", str(WORKERS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=30)
    pid = rtpengine_pid()
    if r.returncode != 0 or not pid:
        sys.exit("rtpengine did not start: " + r.stdout)
    work = tempfile.mkdtemp(prefix="rtpe.", dir=tmp)
    try:
        ng = NG()
        ng.cmd({"command": "ping"})
        rss_idle = rss_kib(pid)
        pairs, errors, later, t0 = [], {}, [], time.time()
        for i in range(calls):
            while later and later[0][0] <= time.time():
                prime(*later.pop(0)[1])
            cid = f"mbench-{calls}-{i}"
            a_port, b_port = gen_ports(i)
            r1 = ng.cmd({"command": "offer", "call-id": cid, "from-tag": "a", "sdp": make_sdp(a_port, i + 1),
                         "ICE": "remove"})
            r2 = ng.cmd({"command": "answer", "call-id": cid, "from-tag": "a", "to-tag": "b",
                         "sdp": make_sdp(b_port, i + 1), "ICE": "remove"}) if r1.get("result") == "ok" else r1
            if r1.get("result") != "ok" or r2.get("result") != "ok":
                key = f"ng: {r2.get('error-reason', r2.get('result'))}"
                errors[key] = errors.get(key, 0) + 1
                continue
            # The offer's SDP (to the callee) says where B sends; the answer's (to the caller), A.
            x, y = media_port(r2["sdp"]), media_port(r1["sdp"])
            prime(i, x, y)
            later.append((time.time() + REPRIME, (i, x, y)))
            pairs.append((i, x, y))
        for when, args in later:
            time.sleep(max(0.0, when - time.time()))
            prime(*args)
        setup_s = time.time() - t0
        rustc = wait_quiet(60, exclude=(pid,))
        res = blast(work, streams_of(pairs), pid, a.secs)
        t1 = time.time()
        deleted = 0
        for i, _, _ in pairs:
            if ng.cmd({"command": "delete", "call-id": f"mbench-{calls}-{i}", "from-tag": "a"}).get("result") == "ok":
                deleted += 1
        res.update({"calls_set_up": len(pairs), "setup_per_s": round(len(pairs) / setup_s, 1),
                    "setup_errors": errors, "bye_ok": deleted, "bye_per_s": round(deleted / (time.time() - t1), 1),
                    "rss_idle_kib": rss_idle, "busy_during_step": rustc})
        return res
    finally:
        subprocess.run([RTPENGINE_RUN, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def report(r):
    lat, cpu = r["lat_us"], r["cpu_pct"]
    per_call = r["rss_per_call_kib"]
    flags = []
    if r["calls_set_up"] < r["calls"]:
        flags.append(f"SETUP FAILED {r['calls'] - r['calls_set_up']}")
    if r.get("streams_without_rx"):
        flags.append(f"{r['streams_without_rx']} streams without rx")
    if r["pps_sent"] < 0.98 * 100 * r["calls_set_up"]:
        flags.append(f"generator behind: {r['pps_sent']} of {100 * r['calls_set_up']} pps sent")
    if r.get("priming_packets_lost"):
        flags.append(f"{r['priming_packets_lost']} early packets lost at set-up")
    if r.get("busy_during_step"):
        flags.append("machine busy (cargo/rustc or other load)")
    if r["setup_errors"]:
        flags.append(f"errors {r['setup_errors']}")
    log(f"{r['engine']:<15} calls={r['calls']:<5} streams={r['streams']:<5} sent_pps={r['pps_sent']:<7} "
        f"recv_pps={r['pps_received']:<7} loss={r['loss_pct']:.3f}% lat_us p50/p99/max="
        f"{lat['p50']:.0f}/{lat['p99']:.0f}/{lat['max']:.0f} cpu% relay={cpu['relay']} rtpblast={cpu['rtpblast']} "
        f"other={cpu['other']} relay_us/pkt={r['relay_us_per_packet']} "
        f"rss MiB idle/peak={r['rss_idle_kib'] / 1024:.1f}/{r['rss_kib']['peak'] / 1024:.1f} "
        f"per-call={per_call:.1f} KiB setup/s={r['setup_per_s']}" + (" [" + "; ".join(flags) + "]" if flags else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", required=True, type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--secs", type=float, default=10, help="seconds of RTP per step (<= 60)")
    ap.add_argument("--engines", default="switchboard,rtpengine",
                    help="comma-separated: switchboard, switchboard-rec, rtpengine (run in this order per step)")
    ap.add_argument("--record", action="store_true", help="also run switchboard-rec (every call recorded)")
    ap.add_argument("--record-calls", type=lambda s: [int(x) for x in s.split(",")],
                    help="the steps for switchboard-rec (default: --calls)")
    ap.add_argument("--retries", type=int, default=2,
                    help="re-runs of a step disturbed by other load on the machine (other CPU > %d %%%%)" % OTHER_BUSY_PCT)
    ap.add_argument("--repeat", type=int, default=1, help="run the whole step list this many times (medians reported)")
    ap.add_argument("--rate", type=float, default=200, help="switchboard call set-up rate, calls/s")
    ap.add_argument("--quiet-wait", type=float, default=900, help="max seconds to wait for cargo/rustc to end before a step")
    ap.add_argument("--json", help="write the raw figures here")
    ap.add_argument("--no-build", action="store_true", help="use target/release/switchboard as it is")
    a = ap.parse_args()
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if a.record and "switchboard-rec" not in engines:
        engines.append("switchboard-rec")
    if set(engines) - {"switchboard", "switchboard-rec", "rtpengine"}:
        sys.exit(f"unknown engine in {engines}")
    if not 0 < a.secs <= 60:
        sys.exit("keep steps between 0 and 60 s")
    a.record_calls = a.record_calls or a.calls
    if max(a.calls + a.record_calls) > MAX_CALLS or min(a.calls + a.record_calls) < 1:
        sys.exit(f"1 to {MAX_CALLS} calls per step (media ports {RELAY_PORTS[0]}-{RELAY_PORTS[1]})")
    busy = generator_ports_free(max(a.calls + a.record_calls))
    if busy:
        sys.exit(f"UDP ports in the generator's range are in use: {busy[:10]}")
    if not os.path.exists(RTPBLAST):
        subprocess.run(["make", "-s", "-C", os.path.dirname(RTPBLAST)], check=True)
    if "rtpengine" in engines and not shutil.which("rtpengine"):
        sys.exit("rtpengine is missing: apt-get install -y rtpengine-daemon")
    if any(e.startswith("switchboard") for e in engines) and not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "switchboard"], cwd=ROOT, check=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           stdout=subprocess.PIPE, text=True).stdout.split("\n")
    build = {"commit": git, "modified": [line[3:] for line in dirty if line.strip()],
             "binary_mtime": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(BINARY)))
             if os.path.exists(BINARY) else None}
    log(f"switchboard {build}")
    tmp = tempfile.mkdtemp(prefix="switchboard-mediabench.")
    results, failures = [], []

    def save():
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"secs": a.secs, "rate": a.rate, "workers": WORKERS, "build": build,
                           "command": " ".join(sys.argv), "results": results, "failures": failures}, f, indent=1)

    try:
        for calls, rep in [(c, r) for r in range(a.repeat) for c in sorted(set(a.calls + a.record_calls))]:
            for engine in engines:
                if calls not in (a.record_calls if engine == "switchboard-rec" else a.calls):
                    continue
                for attempt in range(a.retries + 1):
                    wait_quiet(a.quiet_wait)
                    try:
                        if engine == "rtpengine":
                            r = step_rtpengine(a, calls, tmp)
                        else:
                            r = step_switchboard(a, calls, engine == "switchboard-rec", tmp)
                    except StepError as error:
                        log(f"{engine:<15} calls={calls:<5} STEP FAILED: {error} {error.details}")
                        failures.append({"engine": engine, "calls": calls, "error": str(error),
                                         "details": error.details})
                        r = None
                        continue
                    if r.get("register_problems"):
                        failures.append({"engine": engine, "calls": calls, "register_problems": r["register_problems"]})
                    r["engine"], r["calls"], r["attempt"], r["repeat"] = engine, calls, attempt + 1, rep + 1
                    r["busy_during_step"] = bool(r["busy_during_step"] or r["cpu_pct"]["other"] > OTHER_BUSY_PCT)
                    if not r["busy_during_step"]:
                        break
                    if attempt < a.retries:
                        log(f"  {engine} calls={calls}: disturbed by other load (other CPU {r['cpu_pct']['other']} %), "
                            "running the step again")
                if r is None:
                    continue
                r["rss_per_call_kib"] = round((r["rss_kib"]["peak"] - r["rss_idle_kib"]) / max(1, r["calls_set_up"]), 2)
                results.append(r)
                report(r)
                save()   # after every step, so an interrupted run keeps its figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        save()
    summary(engines, results, a.repeat)


def clean(r):
    return (r["loss_pct"] < LOSS_OK and r["lat_us"]["p99"] < P99_OK_US and r["calls_set_up"] == r["calls"]
            and r["pps_sent"] >= 0.98 * 100 * r["calls"])


def median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2


def summary(engines, results, repeat):
    """A markdown table of the medians over the repeats, and each engine's capacity."""
    log(f"\nmedians over {repeat} run(s) per step; clean = loss < {LOSS_OK} %, p99 < {P99_OK_US} us, "
        "all calls set up, generator keeping up")
    log("| relay | calls | pps relayed | loss % | latency p50 / p99 / max (us) | CPU % relay | CPU % rtpblast "
        "| relay CPU us/packet | RSS idle / peak (MiB) | RSS per call (KiB) | clean runs |")
    log("|---|---|---|---|---|---|---|---|---|---|---|")
    for engine in engines:
        for calls in sorted({r["calls"] for r in results if r["engine"] == engine}):
            rows = [r for r in results if r["engine"] == engine and r["calls"] == calls]
            med = lambda f: median([f(r) for r in rows])  # noqa: E731
            log(f"| {engine} | {calls} | {med(lambda r: r['pps_received']):.0f} | {med(lambda r: r['loss_pct']):.2f} "
                f"| {med(lambda r: r['lat_us']['p50']):.0f} / {med(lambda r: r['lat_us']['p99']):.0f} / "
                f"{med(lambda r: r['lat_us']['max']):.0f} | {med(lambda r: r['cpu_pct']['relay']):.0f} "
                f"| {med(lambda r: r['cpu_pct']['rtpblast']):.0f} | {med(lambda r: r['relay_us_per_packet'] or 0):.1f} "
                f"| {med(lambda r: r['rss_idle_kib']) / 1024:.0f} / {med(lambda r: r['rss_kib']['peak']) / 1024:.0f} "
                f"| {med(lambda r: r['rss_per_call_kib']):.0f} | {sum(map(clean, rows))}/{len(rows)} |")
    log("capacity (the largest N clean in most runs; the step list above it shows where it breaks):")
    for engine in engines:
        steps = sorted({r["calls"] for r in results if r["engine"] == engine})
        verdict = {n: 2 * sum(clean(r) for r in results if r["engine"] == engine and r["calls"] == n)
                   > len([r for r in results if r["engine"] == engine and r["calls"] == n]) for n in steps}
        good = [n for n in steps if verdict[n]]
        busy = sorted({r["calls"] for r in results if r["engine"] == engine and r["busy_during_step"]})
        log(f"  {engine:<15} largest clean N = {max(good) if good else 'none'}; "
            + ", ".join(f"{n}: {'ok' if verdict[n] else 'FAIL'}" for n in steps)
            + (f"; still disturbed by other load at {busy}" if busy else ""))


if __name__ == "__main__":
    main()
