#!/usr/bin/env python3
"""Measure a running gateway's user-space memory, and CPU, per idle WebSocket connection (plain or TLS).

Reads the gateway's VmRSS from /proc before and after opening N upgraded connections (raw sockets, one
handshake each, nothing else sent), and prints (after - before) / N, plus the machine-wide kernel slab growth per
connection (both ends of each socket; a guide to what the kernel holds, e.g. io_uring's armed receives). Connections are spread over source
addresses 127.0.0.2.. so no (source, destination) pair runs out of ephemeral ports.

Also prints the gateway's CPU time (user + system, from /proc/PID/stat) per connection opened: with TLS, what one
handshake (TCP, TLS, WebSocket upgrade) costs the server, whatever the speed of this client. With --tls-ca the
connections speak TLS (to `localhost`, trusting that CA file); they are then opened one at a time.

Usage: scripts/idle-rss.py --pid PID --port PORT [--connections 10000] [--tls-ca FILE]
"""
import argparse
import base64
import os
import selectors
import socket
import ssl
import sys
import time


def vm_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid):
    """User + system CPU time of the process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def upgrade_request():
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def open_tls(i, port, context):
    """One TLS connection, upgraded, opened synchronously."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
    s.bind((f"127.0.0.{2 + i % 200}", 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as browsers: no Nagle wait for the upgrade after Finished
    s.connect(("127.0.0.1", port))
    s = context.wrap_socket(s, server_hostname="localhost")
    s.sendall(upgrade_request())
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = s.recv(4096)
        if not data:
            sys.exit("gateway closed a TLS connection during the handshake")
        buf += data
    if not buf.startswith(b"HTTP/1.1 101"):
        sys.exit(f"handshake refused: {buf[:80]!r}")
    return s


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
    ap.add_argument("--tls-ca", help="speak TLS, trusting this CA (PEM) for the name localhost")
    a = ap.parse_args()

    time.sleep(0.5)
    before = vm_rss(a.pid)
    cpu_before = cpu_seconds(a.pid)
    slab_before = kernel_slab()
    sel = selectors.DefaultSelector()
    socks = []
    pending = {}
    t0 = time.monotonic()
    context = None
    if a.tls_ca:
        context = ssl.create_default_context(cafile=a.tls_ca)
        context.set_alpn_protocols(["http/1.1"])
    for i in range(a.connections if context is None else 0):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, 24, 1)  # IP_BIND_ADDRESS_NO_PORT
        s.bind((f"127.0.0.{2 + i % 200}", 0))
        s.connect(("127.0.0.1", a.port))
        s.sendall(upgrade_request())
        s.setblocking(False)
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
        # Keep the number of unanswered handshakes bounded.
        while len(pending) > 500:
            drain(sel, pending)
    if context is not None:
        socks = [open_tls(i, a.port, context) for i in range(a.connections)]
    while pending:
        if time.monotonic() - t0 > 120:
            sys.exit(f"timed out with {len(pending)} handshakes unanswered")
        drain(sel, pending)
    elapsed = time.monotonic() - t0
    cpu = cpu_seconds(a.pid) - cpu_before
    time.sleep(a.hold)
    after = vm_rss(a.pid)
    slab_after = kernel_slab()
    n = len(socks)
    # The slab figure covers the whole machine (both ends of each connection, and anything else running): it is
    # a rough guide to what the kernel holds, not the gateway's own figure.
    print(f"connections={n} handshakes_per_s={n / elapsed:.0f} rss_before={before} rss_after={after} "
          f"bytes_per_conn={(after - before) / n:.0f} kernel_slab_bytes_per_conn={(slab_after - slab_before) / n:.0f} "
          f"server_cpu_us_per_conn={cpu / n * 1e6:.0f}")
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
