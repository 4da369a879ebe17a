#!/usr/bin/env python3
"""Issue 9's scenario, measured: does one client that never reads pin the feed in memory?

Starts a gateway with --ingest, connects clients that complete the upgrade with a 4 KiB receive buffer and then
never read, writes MIB MiB of 1,000-byte lines as fast as the gateway takes them, and prints the gateway's idle
RSS, its peak RSS (VmHWM) and its RSS afterwards, plus /healthz's memory figures where the binary has them.

Usage: scripts/stalled-client-rss.py [--wsgate BIN] [--io epoll|uring] [--mib 500] [--stalled 1] [--threads 2]
Traffic stays on 127.0.0.1; every process started here is stopped before it exits.
"""
import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def status_kib(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(f"no {field}")


def healthz(addr):
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return json.loads(data.split(b"\r\n\r\n", 1)[1])


def stalled_client(addr):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    c.sendall(f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return c


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wsgate", default=os.path.join(ROOT, "target/release/wsgate"))
    ap.add_argument("--io", default="epoll")
    ap.add_argument("--mib", type=int, default=500)
    ap.add_argument("--stalled", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    gw = subprocess.Popen([a.wsgate, "--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0", "--threads",
                           str(a.threads), "--io", a.io, "--log-level", "error"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        ws = ingest = None
        while ws is None or ingest is None:
            line = gw.stdout.readline()
            if not line:
                sys.exit("the gateway exited during start")
            m = re.search(r"(\d+\.\d+\.\d+\.\d+):(\d+)", line)
            if m and "ingest" in line:
                ingest = (m[1], int(m[2]))
            elif m:
                ws = (m[1], int(m[2]))
        time.sleep(0.3)
        idle = status_kib(gw.pid, "VmRSS:")
        clients = [stalled_client(ws) for _ in range(a.stalled)]
        pub = socket.create_connection(ingest)
        block = (b"x" * 999 + b"\n") * 1024
        t0 = time.time()
        for _ in range(a.mib):
            pub.sendall(block)
        pub.close()
        fed_s = time.time() - t0
        time.sleep(3)  # past the 2 s linger: every stalled client is gone
        h = healthz(ws)
        mem = {k: h[k] >> 20 for k in ("heap_live_bytes", "heap_free_bytes", "log_bytes", "pinned_bytes")
               if isinstance(h.get(k), int)}
        print(f"io={a.io} fed_mib={a.mib} fed_s={fed_s:.2f} idle_rss_mib={idle >> 10} "
              f"peak_rss_mib={status_kib(gw.pid, 'VmHWM:') >> 10} after_rss_mib={status_kib(gw.pid, 'VmRSS:') >> 10} "
              f"slow_consumers={h.get('slow_consumers')} connections={h.get('connections')} "
              + " ".join(f"{k.replace('_bytes', '')}_mib={v}" for k, v in mem.items()))
        del clients
    finally:
        gw.terminate()
        gw.wait(10)


if __name__ == "__main__":
    main()
