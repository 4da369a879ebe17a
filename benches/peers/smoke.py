#!/usr/bin/env python3
"""Smoke test for a broadcast server driven like wsgate (`--listen`, `--upstream`, `--echo`, `--threads`).

    python3 benches/peers/smoke.py target/peers/release/peer-fastwebsockets
    python3 benches/peers/smoke.py target/release/wsgate

Starts a feed server on 127.0.0.1, starts SERVER with `--listen 127.0.0.1:0 --upstream ... --echo --threads 2`, and
checks: the `listening on ws://ADDR/ws` line; feed lines reach every client as text messages, in order, with `\\r`
stripped, empty lines skipped and non-UTF-8 lines dropped; text and binary echoes; ping/pong; a clean close;
404 off `/ws`; and that the server reconnects to the feed after it drops. Needs the `websockets` package
(`pip install websockets`). Traffic stays on 127.0.0.1; everything started here is stopped before exit.
"""

import asyncio
import re
import subprocess
import sys

import websockets

TIMEOUT = 5.0


class Feed:
    """A one-connection-at-a-time TCP feed server."""

    def __init__(self):
        self.writers = asyncio.Queue()

    async def start(self):
        self.server = await asyncio.start_server(lambda r, w: self.writers.put_nowait(w), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def next_connection(self):
        return await asyncio.wait_for(self.writers.get(), TIMEOUT)


async def recv_text(ws):
    msg = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(msg, str), f"expected a text message, got {msg!r}"
    return msg


async def main(server):
    feed = Feed()
    feed_port = await feed.start()
    cmd = [server, "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{feed_port}", "--echo", "--threads", "2"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode()
        m = re.search(r"listening on ws://(\S+)/ws", line)
        assert m, f"no 'listening on ws://ADDR/ws' line: {line!r}"
        url = f"ws://{m.group(1)}/ws"
        print(f"server: {line.strip()}")

        upstream = await feed.next_connection()
        print("feed: server connected")
        clients = [await websockets.connect(url) for _ in range(3)]
        await asyncio.sleep(0.2)  # let the server subscribe them

        lines = [f"msg {i} {'x' * (i % 200)}" for i in range(1000)]
        upstream.write(b"".join(f"{l}\n".encode() for l in lines[:500]))
        upstream.write(b"crlf line\r\n\n\r\n\xff\xfe not utf-8\n")
        upstream.write(b"".join(f"{l}\r\n".encode() for l in lines[500:]))
        await upstream.drain()
        want = lines[:500] + ["crlf line"] + lines[500:]
        for n, ws in enumerate(clients):
            got = [await recv_text(ws) for _ in want]
            assert got == want, f"client {n}: first difference at {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"
        print(f"broadcast: {len(clients)} clients x {len(want)} text messages, in order; \\r stripped, empty and non-UTF-8 lines dropped")

        ws = clients[0]
        await ws.send("echo me ✓")
        assert await recv_text(ws) == "echo me ✓"
        await ws.send(b"\x00\x01binary")
        got = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert got == b"\x00\x01binary", got
        big = "y" * 60_000  # under wsgate's default 64 KiB message limit
        await ws.send(big)
        assert await recv_text(ws) == big
        print("echo: text, binary and a 60 kB text message come back")

        pong = await ws.ping(b"hi")
        await asyncio.wait_for(pong, TIMEOUT)
        print("ping: answered")

        # Feed drop: the server reconnects and the broadcast goes on.
        upstream.close()
        upstream = await feed.next_connection()
        upstream.write(b"after reconnect\n")
        await upstream.drain()
        for ws in clients:
            assert await recv_text(ws) == "after reconnect"
        print("feed: reconnected after a drop, broadcast resumed")

        for ws in clients:
            await asyncio.wait_for(ws.close(), TIMEOUT)
            assert ws.close_code == 1000, ws.close_code
        print("close: clean 1000 handshake")

        try:
            await websockets.connect(url.replace("/ws", "/nope"))
            raise AssertionError("upgrade off /ws accepted")
        except websockets.InvalidStatus as e:
            assert e.response.status_code == 404, e.response.status_code
        print("GET /nope: 404")
        upstream.close()
        print("ok")
    finally:
        proc.terminate()
        await proc.wait()
        feed.server.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1]))
