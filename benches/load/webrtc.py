#!/usr/bin/env python3
"""WebRTC ⇄ SIP bridged calls through switchboard: how many, and what each costs.

  benches/load/webrtc.py --calls 50,100,200 [--codec pcmu|opus] [--secs 20] [--rate 25] [--json FILE]

For every N in --calls: a fresh `target/release/switchboard serve` (temp dir, SQLite, loopback,
2 media workers, as media.py starts it) gets N concurrent calls from
`target/release/webrtc-load` (benches/src/bin/webrtc_load.rs, our own load client): each call
is a str0m peer (full ICE, DTLS-SRTP, PCMU) signalling over SIP over WebSocket as extension
7001 to 7002, a plain SIP UA inside the same client whose RTP is echoed. Every caller sends
50 packets/s; each packet crosses switchboard four times (SRTP in, RTP out, RTP back in, SRTP
out). With --codec opus the callers offer Opus alone and switchboard transcodes every packet
(Opus decode and G.711 encode one way, G.711 decode and Opus encode the other, plus a jitter
buffer). The client reports calls answered and connected, and packets sent and echoed back
over the steady window (all calls up, none hung up yet).

Each step prints: calls connected, caller packets/s sent and received, loss, switchboard CPU
(100 % = one core) and that CPU per call, RSS idle/peak and (peak - idle) / N per call, and the
load client's CPU. The client shares the two cores with the server, as every load generator
here does. Loopback only; every step is bounded in time and stops what it started.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loadlib import log, proc_ticks, wait_quiet  # noqa: E402
import media  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIENT = os.path.join(ROOT, "target", "release", "webrtc-load")


def step(calls, secs, rate, codec):
    with tempfile.TemporaryDirectory(prefix="sb-webrtc-") as work:
        server = media.Server(work)
        try:
            api = media.Api(server.http_port)
            for number in ("7001", "7002"):
                api.request("POST", "/api/v1/extensions", {
                    "number": number, "display_name": number, "password": f"secret-{number}"})
            wait_quiet(30, exclude=(server.pid,))
            idle_rss = media.rss_kib(server.pid)
            sampler = media.RssSampler(server.pid)
            sampler.start()
            cmd = [CLIENT, "--ws", f"ws://127.0.0.1:{server.http_port}/sip",
                   "--sip", f"127.0.0.1:{server.sip_port}", "--domain", "localhost",
                   "--caller", "7001:secret-7001", "--callee", "7002:secret-7002",
                   "--calls", str(calls), "--secs", str(secs), "--rate", str(rate), "--codec", codec]
            client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # CPU over the steady window: all calls set up (plus 3 s), until 1 s before the end.
            ramp = calls / rate + 3
            time.sleep(ramp)
            t0, s0, c0 = time.time(), proc_ticks(server.pid), proc_ticks(client.pid)
            time.sleep(max(1.0, secs - 4))
            t1, s1, c1 = time.time(), proc_ticks(server.pid), proc_ticks(client.pid)
            out, err = client.communicate(timeout=secs + ramp + 60)
            peak_rss, _ = sampler.stop()
            if client.returncode != 0 or not out.strip():
                sys.exit(f"webrtc-load failed ({client.returncode}): {err[-2000:]}")
            result = json.loads(out.strip().splitlines()[-1])
            hz = os.sysconf("SC_CLK_TCK")
            server_cpu = 100 * (s1 - s0) / hz / (t1 - t0)
            result.update({
                "server_cpu_pct": round(server_cpu, 1),
                "server_cpu_pct_per_call": round(server_cpu / max(1, result["connected"]), 3),
                "client_cpu_pct": round(100 * (c1 - c0) / hz / (t1 - t0), 1),
                "rss_idle_mib": round(idle_rss / 1024, 1),
                "rss_peak_mib": round(peak_rss / 1024, 1),
                "rss_kib_per_call": round((peak_rss - idle_rss) / max(1, calls), 1),
                "problems": server.problems()[:5],
            })
            if err.strip():
                result["client_errors"] = err.strip().splitlines()[:5]
            return result
        finally:
            server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="50,100,200")
    parser.add_argument("--secs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=25)
    parser.add_argument("--codec", choices=("pcmu", "opus"), default="pcmu")
    parser.add_argument("--json")
    a = parser.parse_args()
    for path in (media.BINARY, CLIENT):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release --bin switchboard --bin webrtc-load")
    results = []
    for calls in [int(c) for c in a.calls.split(",")]:
        log(f"== {calls} WebRTC calls ({a.codec}), {a.secs} s")
        r = step(calls, a.secs, a.rate, a.codec)
        r["codec"] = a.codec
        results.append(r)
        log(json.dumps(r))
    log("\n| calls | connected | sent pps | received pps | loss | switchboard CPU | CPU per call | "
        "RSS idle / peak | RSS per call | client CPU |")
    log("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        log(f"| {r['calls']} | {r['connected']} | {r['sent_pps']:.0f} | {r['received_pps']:.0f} | "
            f"{100 * r['loss']:.2f} % | {r['server_cpu_pct']} % | {r['server_cpu_pct_per_call']} % | "
            f"{r['rss_idle_mib']} / {r['rss_peak_mib']} MiB | {r['rss_kib_per_call']} KiB | "
            f"{r['client_cpu_pct']} % |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
