#!/usr/bin/env python3
"""What a TURN client sends, attribute by attribute: captures loopback traffic to and from one
TURN server port (UDP and TCP) with an AF_PACKET socket (root; no tcpdump needed) and prints, per
STUN message type and direction, every distinct attribute list seen and how often, with the
values of the attributes that matter to a server (EVEN-PORT, REQUESTED-ADDRESS-FAMILY,
REQUESTED-TRANSPORT, LIFETIME, DONT-FRAGMENT, RESERVATION-TOKEN, SOFTWARE, ERROR-CODE, ...).
ChannelData frames are counted (per channel and length), not listed.

  benches/load/stun_sniff.py --port 3478 --secs 20 [--pcap out.pcap] [--json out.json] [-- command ...]

With a command after --, the capture runs while the command runs (bounded by --secs) and stops
when it exits; otherwise it captures for --secs. --pcap also writes the captured packets of that
port (Linux cooked header stripped to Ethernet) for Wireshark.
"""

import argparse
import collections
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time

COOKIE = 0x2112A442
METHODS = {0x001: "Binding", 0x003: "Allocate", 0x004: "Refresh", 0x006: "Send", 0x007: "Data",
           0x008: "CreatePermission", 0x009: "ChannelBind", 0x00A: "Connect", 0x00B: "ConnectionBind",
           0x00C: "ConnectionAttempt"}
CLASSES = {0: "request", 1: "indication", 2: "success", 3: "error"}
ATTRS = {0x0001: "MAPPED-ADDRESS", 0x0006: "USERNAME", 0x0008: "MESSAGE-INTEGRITY", 0x0009: "ERROR-CODE",
         0x000A: "UNKNOWN-ATTRIBUTES", 0x000C: "CHANNEL-NUMBER", 0x000D: "LIFETIME", 0x0010: "BANDWIDTH(old)",
         0x0012: "XOR-PEER-ADDRESS", 0x0013: "DATA", 0x0014: "REALM", 0x0015: "NONCE",
         0x0016: "XOR-RELAYED-ADDRESS", 0x0017: "REQUESTED-ADDRESS-FAMILY", 0x0018: "EVEN-PORT",
         0x0019: "REQUESTED-TRANSPORT", 0x001A: "DONT-FRAGMENT", 0x001C: "MESSAGE-INTEGRITY-SHA256",
         0x001D: "PASSWORD-ALGORITHM", 0x001E: "USERHASH", 0x0020: "XOR-MAPPED-ADDRESS",
         0x0022: "RESERVATION-TOKEN", 0x0024: "PRIORITY", 0x0025: "USE-CANDIDATE", 0x002A: "CONNECTION-ID",
         0x8000: "ADDITIONAL-ADDRESS-FAMILY", 0x8001: "ADDRESS-ERROR-CODE", 0x8002: "PASSWORD-ALGORITHMS",
         0x8003: "ALTERNATE-DOMAIN", 0x8004: "ICMP", 0x8022: "SOFTWARE", 0x8023: "ALTERNATE-SERVER",
         0x8025: "TRANSACTION-TRANSMIT-COUNTER", 0x8027: "CACHE-TIMEOUT", 0x8028: "FINGERPRINT",
         0x8029: "ICE-CONTROLLED", 0x802A: "ICE-CONTROLLING", 0x802B: "RESPONSE-ORIGIN",
         0x802C: "OTHER-ADDRESS", 0x802E: "THIRD-PARTY-AUTHORIZATION", 0x802F: "ORIGIN",
         0x8030: "MOBILITY-TICKET"}
FAMILIES = {1: "IPv4", 2: "IPv6"}


def attr_value(t, v):
    """A short rendering of the values worth seeing (None for the rest)."""
    if t == 0x0018:
        return f"0x{v[0]:02x} (R={'1' if v and v[0] & 0x80 else '0'})" if v else "empty"
    if t in (0x0017, 0x8000):
        return FAMILIES.get(v[0], f"0x{v[0]:02x}") if v else "empty"
    if t == 0x0019:
        return {17: "UDP", 6: "TCP"}.get(v[0], str(v[0])) if v else "empty"
    if t == 0x000D and len(v) == 4:
        return str(struct.unpack("!I", v)[0])
    if t == 0x001A:
        return f"len {len(v)}"
    if t == 0x0022:
        return v.hex()
    if t in (0x8022, 0x0014, 0x0006):
        return v.decode(errors="replace")
    if t == 0x0009 and len(v) >= 4:
        return f"{(v[2] & 7) * 100 + v[3]} {v[4:].decode(errors='replace')}"
    if t == 0x000C and len(v) >= 2:
        return f"0x{struct.unpack('!H', v[:2])[0]:04x}"
    if t == 0x0010 and len(v) == 4:
        return str(struct.unpack("!I", v)[0])
    if t in (0x0012, 0x0016, 0x0020) and len(v) >= 8:
        port = struct.unpack("!H", v[2:4])[0] ^ (COOKIE >> 16)
        ip = ".".join(str(b ^ c) for b, c in zip(v[4:8], struct.pack("!I", COOKIE))) if v[1] == 1 else "v6"
        return f"{ip}:{port}"
    return None


def parse_stun(data):
    """(method, class, [(type, value bytes)]) of one STUN message, or None."""
    if len(data) < 20 or data[0] & 0xC0 or struct.unpack("!I", data[4:8])[0] != COOKIE:
        return None
    mtype, length = struct.unpack("!HH", data[:4])
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    cls = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
    attrs, i, end = [], 20, min(len(data), 20 + length)
    while i + 4 <= end:
        t, n = struct.unpack("!HH", data[i:i + 4])
        attrs.append((t, data[i + 4:i + 4 + n]))
        i += 4 + n + (-n % 4)
    return method, cls, attrs


class Summary:
    def __init__(self, server_port):
        self.port = server_port
        self.kinds = collections.defaultdict(collections.Counter)   # (dir, transport, type) -> attr lists
        self.values = collections.defaultdict(collections.Counter)  # (dir, transport, type, attr) -> values
        self.channel = collections.Counter()                        # (dir, transport) -> ChannelData frames
        self.channel_lengths = collections.Counter()
        self.other = collections.Counter()

    def message(self, direction, transport, data):
        if not data:
            return
        if 0x40 <= data[0] <= 0x7F and len(data) >= 4:
            self.channel[(direction, transport)] += 1
            self.channel_lengths[(direction, transport, struct.unpack("!H", data[2:4])[0])] += 1
            return
        parsed = parse_stun(data)
        if not parsed:
            self.other[(direction, transport)] += 1
            return
        method, cls, attrs = parsed
        kind = f"{METHODS.get(method, hex(method))} {CLASSES[cls]}"
        key = (direction, transport, kind)
        self.kinds[key][tuple(ATTRS.get(t, f"0x{t:04x}") for t, _ in attrs)] += 1
        for t, v in attrs:
            shown = attr_value(t, v)
            if shown is not None:
                self.values[key + (ATTRS.get(t, f"0x{t:04x}"),)][shown] += 1

    def report(self, limit=12):
        lines = []
        for key in sorted(self.kinds):
            direction, transport, kind = key
            total = sum(self.kinds[key].values())
            lines.append(f"{direction} {transport} {kind}: {total}")
            for attrs, n in self.kinds[key].most_common():
                lines.append(f"    {n:6d} x  {', '.join(attrs) or '(no attributes)'}")
            for vkey in sorted(k for k in self.values if k[:3] == key):
                vals = self.values[vkey]
                shown = ", ".join(f"{v} ({n})" for v, n in vals.most_common(limit))
                more = f", ... {len(vals) - limit} more values" if len(vals) > limit else ""
                lines.append(f"          {vkey[3]}: {shown}{more}")
        for (direction, transport), n in sorted(self.channel.items()):
            sizes = sorted((length, c) for (d, t, length), c in self.channel_lengths.items()
                           if d == direction and t == transport)
            lines.append(f"{direction} {transport} ChannelData: {n} frames, lengths {sizes[:6]}")
        for (direction, transport), n in sorted(self.other.items()):
            lines.append(f"{direction} {transport} other (not STUN, not ChannelData): {n}")
        return "\n".join(lines)

    def as_json(self):
        return {"messages": [{"direction": d, "transport": t, "type": k,
                              "attribute_lists": [{"count": n, "attributes": list(a)} for a, n in c.most_common()],
                              "values": {vk[3]: dict(self.values[vk]) for vk in self.values if vk[:3] == (d, t, k)}}
                             for (d, t, k), c in sorted(self.kinds.items())],
                "channel_data": {f"{d} {t}": n for (d, t), n in self.channel.items()}}


def capture(port, secs, command=None, pcap=None):
    summary = Summary(port)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind(("lo", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    streams = {}     # TCP (src, dst) -> [next seq, buffer]
    out = open(pcap, "wb") if pcap else None
    if out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    proc = subprocess.Popen(command) if command else None
    deadline = time.time() + secs
    try:
        while time.time() < deadline:
            if proc and proc.poll() is not None:
                # Drain what is already queued, then stop.
                deadline = min(deadline, time.time() + 0.3)
            r, _, _ = select.select([sock], [], [], 0.1)
            if not r:
                continue
            frame, addr = sock.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:     # each loopback packet is seen twice
                continue
            if len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            ihl, proto = (ip[0] & 0x0F) * 4, ip[9]
            total = struct.unpack("!H", ip[2:4])[0]
            ip = ip[:total]
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            seg = ip[ihl:]
            sport, dport = struct.unpack("!HH", seg[:4])
            if port not in (sport, dport):
                continue
            if out:
                now = time.time()
                out.write(struct.pack("<IIII", int(now), int((now % 1) * 1e6), len(frame), len(frame)) + frame)
            direction = "client->server" if dport == port else "server->client"
            if proto == 17:
                summary.message(direction, "UDP", seg[8:])
            elif proto == 6:
                seq = struct.unpack("!I", seg[4:8])[0]
                off = (seg[12] >> 4) * 4
                flags = seg[13]
                payload = seg[off:]
                key = ((src, sport), (dst, dport))
                if flags & 0x02:   # SYN
                    streams[key] = [(seq + 1) & 0xFFFFFFFF, b""]
                    continue
                st = streams.get(key)
                if st is None or not payload or seq != st[0]:
                    continue       # retransmission or a stream whose start was missed
                st[0] = (seq + len(payload)) & 0xFFFFFFFF
                st[1] += payload
                buf = st[1]
                while len(buf) >= 4:
                    if 0x40 <= buf[0] <= 0x7F:
                        n = 4 + struct.unpack("!H", buf[2:4])[0]
                        n += -n % 4            # ChannelData is padded over TCP (RFC 8656 §12.5)
                    else:
                        n = 20 + struct.unpack("!H", buf[2:4])[0]
                    if len(buf) < n:
                        break
                    summary.message(direction, "TCP", buf[:n])
                    buf = buf[n:]
                st[1] = buf
    finally:
        sock.close()
        if out:
            out.close()
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True, help="the TURN server's port on 127.0.0.1")
    ap.add_argument("--secs", type=float, default=20, help="capture at most this long")
    ap.add_argument("--pcap", help="also write the packets here")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("command", nargs="*", help="run this while capturing (after --)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (an AF_PACKET socket on lo)")
    summary = capture(a.port, a.secs, a.command or None, a.pcap)
    print(summary.report())
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary.as_json(), f, indent=1)


if __name__ == "__main__":
    main()
