"""A minimal HTTP/1.1 keep-alive client over asyncio streams, for request floods.

httpx costs several milliseconds of client CPU per request on a busy machine; a fuzz run
of 10,000 requests would measure the client, not the server. This writes one request,
reads one Content-Length-framed response, and keeps the connection for the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RawHttp:
    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connections = 0

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
        return await asyncio.wait_for(self._post(path, body, headers), self.timeout)

    async def _post(self, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        if self._writer is None:
            await self._connect()
        try:
            return await self._exchange(request)
        except (ConnectionError, asyncio.IncompleteReadError):
            # The server may close an idle keep-alive connection between two requests.
            await self.close()
            await self._connect()
            return await self._exchange(request)

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self.connections += 1

    async def _exchange(self, request: bytes) -> RawResponse:
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return RawResponse(int(status_line.split(" ")[1]), headers, body)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None
