"""A fake x402 facilitator for the benchmarks: answers at once (or after a fixed delay)
with success, never touches a chain.

Plain asyncio HTTP/1.1 with keep-alive rather than Starlette under uvicorn (h11, pure
Python here): at 32 requests in flight and 20 ms each the fake must serve 1,600 requests
a second on one core, and its own cost should not be what the benchmark measures.

* ``GET /supported``: the exact scheme on ``--network`` (x402 v2)
* ``POST /verify``: ``{"isValid": true, "payer": ...}`` after ``--verify-ms``
* ``POST /settle``: ``{"success": true, "transaction": <fresh hash>, ...}`` after
  ``--settle-ms``

Run as ``python -m bench.fakefac --port 0 [--verify-ms 20]``; prints ``PORT <n>`` when it
listens, and the request counts on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

COUNTS: dict[str, int] = {"supported": 0, "verify": 0, "settle": 0, "other": 0}


def _response(status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    reason = {200: "OK", 404: "Not Found", 400: "Bad Request"}.get(status, "OK")
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nconnection: keep-alive\r\n\r\n"
    )
    return head.encode() + data


def _payer(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
        return str(doc["paymentPayload"]["payload"]["authorization"]["from"])
    except (ValueError, KeyError, TypeError):
        return None


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: argparse.Namespace
) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            path = path.split("?")[0].rstrip("/")
            if method == "GET" and path.endswith("/supported"):
                COUNTS["supported"] += 1
                answer = _response(
                    200,
                    {
                        "kinds": [{"x402Version": 2, "scheme": "exact", "network": args.network}],
                        "extensions": [],
                        "signers": {"eip155:*": ["0x" + "fa" * 20]},
                    },
                )
            elif method == "POST" and path.endswith("/verify"):
                COUNTS["verify"] += 1
                if args.verify_ms:
                    await asyncio.sleep(args.verify_ms / 1000)
                answer = _response(200, {"isValid": True, "payer": _payer(body)})
            elif method == "POST" and path.endswith("/settle"):
                COUNTS["settle"] += 1
                if args.settle_ms:
                    await asyncio.sleep(args.settle_ms / 1000)
                answer = _response(
                    200,
                    {
                        "success": True,
                        "transaction": "0x" + os.urandom(32).hex(),
                        "network": args.network,
                        "payer": _payer(body),
                    },
                )
            else:
                COUNTS["other"] += 1
                answer = _response(404, {"error": "not found"})
            writer.write(answer)
            await writer.drain()
    finally:
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args), args.host, args.port, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(json.dumps(COUNTS), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--network", default="eip155:31337")
    parser.add_argument("--verify-ms", type=float, default=0.0)
    parser.add_argument("--settle-ms", type=float, default=0.0)
    asyncio.run(serve(parser.parse_args()))
    sys.exit(0)


if __name__ == "__main__":
    main()
