#!/usr/bin/env python3
"""Measure a running gateway's user-space memory per idle WebSocket connection.

Reads the gateway's VmRSS from /proc before and after opening N upgraded connections (raw sockets, one
handshake each, nothing else sent), and prints (after - before) / N, plus the machine-wide kernel slab growth per
connection (both ends of each socket; a guide to what the kernel holds, e.g. io_uring's armed receives). Connections are spread over source
addresses 127.0.0.2.. so no (source, destination) pair runs out of ephemeral ports.

Usage: scripts/idle-rss.py --pid PID --port PORT [--connections 10000]
"""
import argparse
import base64
import os
import selectors
import socket
import sys
import time


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def kernel_slab():
    """Machine-wide kernel slab memory (bytes): socket buffers, io_uring requests and the like live there."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Slab in /proc/meminfo")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds to wait before reading RSS")
    a = ap.parse_args()

    time.sleep(0.5)
    before = vm_rss(a.pid)
    slab_before = kernel_slab()
    sel = selectors.DefaultSelector()
    socks = []
    pending = {}
    t0 = time.monotonic()
    for i in range(a.connections):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        s.bind((f"127.0.0.{2 + i % 200}", 0))
        s.connect(("127.0.0.1", a.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        s.setblocking(False)
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        # Keep the number of unanswered handshakes bounded.
        while len(pending) > 500:
            drain(sel, pending)
    while pending:
        if time.monotonic() - t0 > 120:
            sys.exit(f"timed out with {len(pending)} handshakes unanswered")
        drain(sel, pending)
    elapsed = time.monotonic() - t0
    time.sleep(a.hold)
    after = vm_rss(a.pid)
    slab_after = kernel_slab()
    n = len(socks)
    # The slab figure covers the whole machine (both ends of each connection, and anything else running): it is
    # a rough guide to what the kernel holds, not the gateway's own figure.
    print(f"connections={n} handshakes_per_s={n / elapsed:.0f} rss_before={before} rss_after={after} "
          f"bytes_per_conn={(after - before) / n:.0f} kernel_slab_bytes_per_conn={(slab_after - slab_before) / n:.0f}")
    for s in socks:
        s.close()


def drain(sel, pending):
    for key, _ in sel.select(timeout=1.0):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        if not data:
            sys.exit("gateway closed a connection during the handshake")
        buf = pending.get(s, b"") + data
        if b"\r\n\r\n" in buf:
            if not buf.startswith(b"HTTP/1.1 101"):
                sys.exit(f"handshake refused: {buf[:80]!r}")
            sel.unregister(s)
            del pending[s]
        else:
            pending[s] = buf


if __name__ == "__main__":
    main()
