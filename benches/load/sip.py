#!/usr/bin/env python3
"""SIP load against a release build of switchboard on loopback, with SIPp (Debian `sip-tester`).

  benches/load/sip.py reg  --rates 1000,2000 [--secs 20] [--users 10000]
      REGISTER with digest auth (401, then REGISTER with credentials: 2 transactions), users
      cycled from --users extensions created through the REST API.
  benches/load/sip.py call --rates 500,1000 [--secs 30] [--hold 0]
      calls from extension 1001 (digest-authenticated INVITE: 401, ACK, INVITE) through the
      B2BUA to a SIPp UAS registered as 1002 (180, 200 with SDP, ACK, BYE after --hold ms).
      Media ports are allocated and bound for every call; no RTP is sent.

Every step runs a fixed number of calls (rate x secs) with a SIPp timeout, so it stops by itself.
One line per step: achieved rate, failed calls, retransmissions, for calls the authenticated
INVITE to 180 latency (p50/p99, from SIPp's response-time trace), and CPU of each process
(100 % = one core) with the server's peak resident memory. --json FILE writes the raw figures.
The server and SIPp share the machine's cores, as in ../shared/peers (Kamailio's figures).
"""

import argparse
import csv
import glob
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "benches", "load", "sipp")
REGISTER = os.path.join(ROOT, "tests", "sipp", "register_auth.xml")
BINARY = os.path.join(ROOT, "target", "release", "switchboard")
ADMIN_PASSWORD = "bench-admin-password"
TICK = os.sysconf("SC_CLK_TCK")


def free_port(kind=socket.SOCK_DGRAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid):
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


class Server:
    """switchboard serve in a temp dir, SQLite, SIP over UDP on loopback."""

    def __init__(self, work, env):
        self.work = work
        self.sip_port = free_port()
        self.http_port = free_port(socket.SOCK_STREAM)
        full = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")}
        full.update({
            "SWITCHBOARD_HTTP__BIND": f"127.0.0.1:{self.http_port}",
            "SWITCHBOARD_SIP__UDP_BIND": f"127.0.0.1:{self.sip_port}",
            "SWITCHBOARD_SIP__TCP": "false",
            "SWITCHBOARD_HTTP__TLS": "false",
            "SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS": "127.0.0.1",
            "SWITCHBOARD_MEDIA__BIND_IP": "127.0.0.1",
            "SWITCHBOARD_ADMIN_PASSWORD": ADMIN_PASSWORD,
            # This benchmark measures calls; TURN (port 3478) stays off.
            "SWITCHBOARD_TURN__ENABLED": "false",
            "SWITCHBOARD_LOG__LEVEL": "warn",
        })
        full.update(env)
        self.out = open(os.path.join(work, "server.out"), "w+")
        self.err = open(os.path.join(work, "server.err"), "w")
        self.proc = subprocess.Popen([BINARY, "serve"], cwd=work, env=full, stdout=self.out, stderr=self.err)
        deadline = time.time() + 30
        while time.time() < deadline:
            self.out.seek(0)
            if "SIP: UDP listening" in self.out.read():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        sys.exit("switchboard did not start: " + open(os.path.join(work, "server.err")).read())

    def stop(self):
        try:
            print(f"server: {len(os.listdir(f'/proc/{self.proc.pid}/fd'))} open files at the end", file=sys.stderr)
        except OSError:
            pass
        # The server's warnings say what went wrong in a failing step (the work dir is removed).
        warnings = [line for line in open(os.path.join(self.work, "server.err"))
                    if ("WARN" in line or "ERROR" in line) and "self-signed" not in line]
        if warnings:
            kinds = {}
            for line in warnings:
                text = line.split("switchboard_", 1)[-1][:90]
                kinds[text] = kinds.get(text, 0) + 1
            print(f"server: {len(warnings)} warnings/errors", file=sys.stderr)
            for text, count in sorted(kinds.items(), key=lambda kv: -kv[1])[:5]:
                print(f"  {count} x {text}", file=sys.stderr)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Api:
    """The REST API over one keep-alive connection."""

    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.token = None
        body = self.request("POST", "/api/v1/auth/login",
                            {"email": "admin@localhost", "password": ADMIN_PASSWORD})
        self.token = body["access_token"]

    def request(self, method, path, body):
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        self.conn.request(method, path, json.dumps(body), headers)
        response = self.conn.getresponse()
        data = response.read()
        if response.status >= 300:
            sys.exit(f"{method} {path}: {response.status} {data[:200]!r}")
        return json.loads(data) if data else None

    def extension(self, number, password):
        self.request("POST", "/api/v1/extensions",
                     {"number": number, "display_name": f"Ext {number}", "password": password})


def users_csv(work, numbers):
    path = os.path.join(work, f"users-{len(numbers)}.csv")
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for n in numbers:
            f.write(f"{n};[authentication username={n} password=password-{n}]\n")
    return path


def wait_usage(proc, timeout):
    """Waits (killing it after `timeout` s) for a child; returns (exit code, CPU seconds)."""
    deadline = time.time() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
        if time.time() > deadline:
            proc.kill()
        time.sleep(0.05)


def sipp(args, work, timeout):
    """Runs SIPp to completion; returns (exit code, CPU seconds, wall seconds)."""
    start = time.time()
    proc = subprocess.Popen(["sipp"] + args + ["-nostdin"], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, cpu = wait_usage(proc, timeout)
    return code, cpu, time.time() - start


def last_stats(path):
    with open(path) as f:
        rows = list(csv.reader(f, delimiter=";"))
    return dict(zip(rows[0], rows[-1]))


def percentiles(pattern):
    """p50 and p99 (ms) of SIPp's response-time trace (-trace_rtt)."""
    values = []
    for path in glob.glob(pattern):
        with open(path) as f:
            for row in csv.reader(f, delimiter=";"):
                try:
                    values.append(float(row[1]))
                except (IndexError, ValueError):
                    pass
    if not values:
        return None, None
    values.sort()
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 2)
    return pick(0.50), pick(0.99)


COMMON = ["-i", "127.0.0.1", "-buff_size", "4194304", "-trace_stat", "-fd", "1"]


def step_result(name, code, stats, cpu, wall, server_cpu, server_rss, extra=None):
    ok, failed = int(stats["SuccessfulCall(C)"]), int(stats["FailedCall(C)"])
    result = {
        "step": name, "ok": ok, "failed": failed, "sipp_exit": code,
        "retransmissions": int(stats["Retransmissions(C)"]),
        "wall_s": round(wall, 2), "achieved_per_s": round(ok / wall, 1),
        "cpu_pct": {"switchboard": round(100 * server_cpu / wall), "sipp": round(100 * cpu / wall)},
        "switchboard_peak_rss_mib": server_rss,
    }
    result.update(extra or {})
    return result


def bench_register(a, work):
    server = Server(work, {"SWITCHBOARD_SIP__MAX_TRANSACTIONS": "1000000"})
    try:
        api = Api(server.http_port)
        numbers = [str(100000 + i) for i in range(1, a.users + 1)]
        started = time.time()
        for n in numbers:
            api.extension(n, f"password-{n}")
        print(f"created {len(numbers)} extensions in {time.time() - started:.1f} s")
        csv_path = users_csv(work, numbers)
        results = []
        for rate in a.rates:
            name = f"reg-{rate}"
            stat = os.path.join(work, f"{name}.csv")
            before = proc_cpu(server.proc.pid)
            code, cpu, wall = sipp([f"127.0.0.1:{server.sip_port}", "-sf", REGISTER, "-inf", csv_path,
                                    "-r", str(rate), "-m", str(rate * a.secs), "-p", str(free_port()),
                                    "-timeout", f"{a.secs + 20}s", "-stf", stat] + COMMON, work, a.secs + 40)
            server_cpu = proc_cpu(server.proc.pid) - before
            result = step_result(name, code, last_stats(stat), cpu, wall, server_cpu,
                                 proc_peak_rss_mib(server.proc.pid), {"target_per_s": rate})
            results.append(result)
            report(result)
        return results
    finally:
        server.stop()


def bench_call(a, work):
    server = Server(work, {
        "SWITCHBOARD_SIP__MAX_TRANSACTIONS": "2000000",
        "SWITCHBOARD_MEDIA__MAX_CALLS": "100000",
        "SWITCHBOARD_MEDIA__MAX_CALLS_PER_TENANT": "100000",
        "SWITCHBOARD_MEDIA__MAX_CALLS_PER_SECOND": "0",
        "SWITCHBOARD_MEDIA__MAX_CALLS_PER_SECOND_PER_TENANT": "0",
        "SWITCHBOARD_MEDIA__RTP_PORT_MIN": "10000",
        "SWITCHBOARD_MEDIA__RTP_PORT_MAX": "32766",
    })
    try:
        api = Api(server.http_port)
        api.extension("1001", "password-1001")
        api.extension("1002", "password-1002")
        caller_csv = users_csv(work, ["1001"])
        uas_port = free_port()
        code, _, _ = sipp([f"127.0.0.1:{server.sip_port}", "-sf", REGISTER, "-inf", users_csv(work, ["1002"]),
                           "-m", "1", "-p", str(uas_port), "-timeout", "10s"] + COMMON[:2], work, 20)
        if code != 0:
            sys.exit("the callee could not register")
        results = []
        for rate in a.rates:
            name = f"call-{rate}"
            total = rate * a.secs
            uas = subprocess.Popen(["sipp", f"127.0.0.1:{server.sip_port}", "-sf", os.path.join(HERE, "call_uas.xml"),
                                    "-p", str(uas_port), "-m", str(total), "-timeout", f"{a.secs + 30}s", "-nostdin",
                                    "-stf", os.path.join(work, f"{name}-uas.csv")] + COMMON,
                                   cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stat = os.path.join(work, f"{name}.csv")
            before = proc_cpu(server.proc.pid)
            for old in glob.glob(os.path.join(work, "call_uac_*_rtt.csv")):
                os.remove(old)
            code, cpu, wall = sipp([f"127.0.0.1:{server.sip_port}", "-sf", os.path.join(HERE, "call_uac.xml"),
                                    "-inf", caller_csv, "-s", "1002", "-r", str(rate), "-m", str(total),
                                    "-d", str(a.hold), "-l", str(max(rate * 10, 1000)), "-p", str(free_port()),
                                    "-timeout", f"{a.secs + 20}s", "-stf", stat, "-trace_rtt", "-rtt_freq", "1"]
                                   + COMMON, work, a.secs + 40)
            server_cpu = proc_cpu(server.proc.pid) - before
            _, uas_cpu = wait_usage(uas, 40)
            p50, p99 = percentiles(os.path.join(work, "call_uac_*_rtt.csv"))
            result = step_result(name, code, last_stats(stat), cpu, wall, server_cpu,
                                 proc_peak_rss_mib(server.proc.pid),
                                 {"target_per_s": rate, "hold_ms": a.hold,
                                  "invite_to_180_ms": {"p50": p50, "p99": p99}})
            result["cpu_pct"]["sipp_uas"] = round(100 * uas_cpu / wall)
            results.append(result)
            report(result)
            # Let the finished transactions of this step expire before the next one.
            time.sleep(a.pause)
        return results
    finally:
        server.stop()


def report(r):
    latency = r.get("invite_to_180_ms")
    lat = f" INVITE->180 p50 {latency['p50']} ms p99 {latency['p99']} ms" if latency else ""
    print(f"{r['step']}: {r['achieved_per_s']}/s ok {r['ok']} failed {r['failed']} retrans {r['retransmissions']}"
          f"{lat} CPU% {r['cpu_pct']} peak RSS {r['switchboard_peak_rss_mib']} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["reg", "call"])
    ap.add_argument("--rates", required=True, type=lambda s: [int(x) for x in s.split(",")])
    ap.add_argument("--secs", type=int, default=20)
    ap.add_argument("--users", type=int, default=10000)
    ap.add_argument("--hold", type=int, default=0, help="ms between ACK and BYE")
    ap.add_argument("--pause", type=int, default=0, help="seconds between call steps")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--no-build", action="store_true", help="use target/release/switchboard as it is")
    a = ap.parse_args()
    if a.secs > 60:
        sys.exit("keep steps at 60 s or less")
    if not shutil.which("sipp"):
        sys.exit("SIPp is missing: apt-get install sip-tester")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "switchboard"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="switchboard-sipbench.")
    try:
        results = bench_register(a, work) if a.kind == "reg" else bench_call(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"kind": a.kind, "secs": a.secs, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
