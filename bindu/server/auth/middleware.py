"""Plain ASGI middleware: authenticate the JSON-RPC endpoint's callers.

A request without credentials passes through as anonymous (what it may do is for the
endpoint to decide); bad credentials end it here with HTTP 401 and a JSON-RPC error body.
"""

from __future__ import annotations

from loguru import logger
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from bindu.server import jsonrpc
from bindu.server.auth.authenticator import Authenticator
from bindu.server.auth.principal import AuthFailed, AuthUnavailable, Caller

# Where the caller's principal (or None) is left for the endpoint.
PRINCIPAL_KEY = "bindu.principal"


def caller_of(scope: Scope) -> Caller:
    principal: Caller = scope.get("state", {}).get(PRINCIPAL_KEY)
    return principal


class AuthMiddleware:
    def __init__(self, app: ASGIApp, authenticator: Authenticator, paths: frozenset[str]) -> None:
        self.app = app
        self._auth = authenticator
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._auth.authenticate(Headers(scope=scope))
        except AuthFailed as exc:
            logger.info("auth: credentials refused: {}", exc)
            headers = {}
            challenge = self._auth.www_authenticate()
            if challenge:
                headers["WWW-Authenticate"] = challenge
            body = jsonrpc.error(None, jsonrpc.UNAUTHENTICATED, f"Unauthenticated: {exc}")
            await JSONResponse(body, 401, headers=headers)(scope, receive, send)
            return
        except AuthUnavailable as exc:
            logger.warning("auth: cannot check credentials: {}", exc)
            body = jsonrpc.error(
                None, jsonrpc.AUTH_UNAVAILABLE, "authentication temporarily unavailable"
            )
            await JSONResponse(body, 503, headers={"Retry-After": "5"})(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)
