"""An independent wss:// client for tests/tls.rs: Python's ssl (OpenSSL) + websockets.

Usage: wss_client.py URL CA_FILE N — trusts only CA_FILE, prints "connected", expects the text messages
"py 0" .. "py N-1" in order, prints "ok", closes cleanly (close frame, then TLS close_notify).
"""
import asyncio
import ssl
import sys

import websockets


async def main(url: str, ca: str, n: int) -> None:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    async with websockets.connect(url, ssl=ctx, server_hostname="localhost") as ws:
        print("connected", flush=True)
        for i in range(n):
            msg = await asyncio.wait_for(ws.recv(), 10)
            if msg != f"py {i}":
                sys.exit(f"expected 'py {i}', got {msg!r}")
    print("ok", flush=True)


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
