"""Push and webhook receivers for tests: real HTTP servers on loopback that record calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bindu.server.embedded import bind, serving


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Receiver:
    """Answers each call with ``status`` (or the next of ``script`` while it lasts)."""

    calls: list[Call] = field(default_factory=list)  # every call
    accepted: list[Call] = field(default_factory=list)  # the calls answered 2xx
    status: int = 200
    script: list[int] = field(default_factory=list)
    redirect_to: str | None = None

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            call = Call(request.url.path, dict(request.headers), await request.body())
            self.calls.append(call)
            status = self.script.pop(0) if self.script else self.status
            if 200 <= status < 300:
                self.accepted.append(call)
            headers = {"location": self.redirect_to} if self.redirect_to else None
            return Response(status_code=status, headers=headers)

        return Starlette(routes=[Route("/{path:path}", hook, methods=["POST"])])

    def bodies(self, path: str | None = None) -> list[Any]:
        return [c.body for c in self.accepted if path is None or c.path == path]


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[str]:
    async with serving(receiver.app(), bind(), lifespan="off") as url:
        yield url


async def verified_claims(call: Call, server_url: str, audience: str) -> dict[str, Any]:
    """The notification's JWT checked as a receiver would: the server's JWKS, the
    signature, issuer, audience, expiry and the body's hash."""
    async with httpx.AsyncClient() as http:
        keys = (await http.get(server_url.rstrip("/") + "/.well-known/jwks.json")).json()
    token = call.headers["x-a2a-notification-jwt"]
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(keys)[kid].key
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=["ES256"],
        audience=audience,
        issuer=server_url.rstrip("/") + "/",
        options={"require": ["exp", "iat", "jti", "aud", "iss"]},
    )
    assert claims["request_body_sha256"] == hashlib.sha256(call.raw).hexdigest()
    return claims
