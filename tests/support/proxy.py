"""A loopback HTTP proxy in front of a real component (anvil's RPC, the facilitator):
it forwards every request, records what passed, and injects faults on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bindu.server.embedded import bind, serving

Mode = Literal["pass", "down", "error_500", "malformed", "slow"]


@dataclass
class Proxy:
    target: str
    mode: Mode = "pass"
    slow_seconds: float = 30.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    url: str = ""

    def rpc_calls(self, method: str) -> list[dict[str, Any]]:
        """JSON-RPC requests (batches flattened) whose method is ``method``."""
        out: list[dict[str, Any]] = []
        for body in self.requests:
            items = body if isinstance(body, list) else [body]
            out += [
                item for item in items if isinstance(item, dict) and item.get("method") == method
            ]
        return out

    def paths(self, path: str) -> int:
        return sum(
            1 for body in self.requests if isinstance(body, dict) and body.get("_path") == path
        )


@asynccontextmanager
async def proxy(target: str) -> AsyncIterator[Proxy]:
    state = Proxy(target=target.rstrip("/"))
    client = httpx.AsyncClient(timeout=60)

    async def forward(request: Request) -> Response:
        body = await request.body()
        if state.mode == "down":
            state.refused += 1
            return Response(b'{"error": "proxy: down"}', 503, media_type="application/json")
        if state.mode == "error_500":
            state.refused += 1
            return Response(b'{"error": "proxy: boom"}', 500, media_type="application/json")
        try:
            doc = json.loads(body) if body else {}
        except json.JSONDecodeError:
            doc = {}
        if isinstance(doc, dict):
            doc = {**doc, "_path": request.url.path}
        state.requests.append(doc)
        if state.mode == "slow":
            await asyncio.sleep(state.slow_seconds)
        upstream = await client.request(
            request.method,
            state.target + request.url.path,
            content=body,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        if state.mode == "malformed":
            return Response(b"<html>definitely not json", 200, media_type="application/json")
        return Response(
            upstream.content,
            upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
    async with serving(app, bind(), lifespan="off") as url:
        state.url = url
        try:
            yield state
        finally:
            await client.aclose()
