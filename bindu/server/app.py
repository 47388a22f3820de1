"""The Starlette app: JSON-RPC on ``POST /``, agent card, health and metrics."""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from loguru import logger
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402.http.constants import (
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
)
from x402.http.utils import encode_payment_response_header
from x402.schemas import SettleResponse

from bindu import __version__
from bindu.a2a import MessageSendParams, new_id, utcnow
from bindu.agent import Agent
from bindu.metrics import PAYWALL_RATE_LIMITED, PAYWALL_REFUSALS, QUEUE_REFUSALS
from bindu.payments.paywall import Refusal
from bindu.payments.records import META_ERROR, META_RECEIPTS, META_STATUS, PaymentStatus
from bindu.server import jsonrpc
from bindu.server.auth.authenticator import Authenticator
from bindu.server.auth.middleware import AuthMiddleware, caller_of
from bindu.server.auth.principal import Caller
from bindu.server.client_address import client_key
from bindu.server.embedded import serving
from bindu.server.handlers import Handlers, SignInRequired, parse_params
from bindu.server.jsonrpc import RpcError
from bindu.server.observability import (
    PaymentGauges,
    bind_metrics_socket,
    describe,
    metrics_app,
    metrics_endpoint,
)
from bindu.server.services import Service
from bindu.server.task_manager import Busy, TaskManager
from bindu.settings import Settings
from bindu.storage.base import Storage

# The interpreter's default. py_ecc (imported through x402's EVM signer) raises the limit to
# 100,000 at import; deep recursion in C code (json's parser) then overflows the C stack
# and the process dies with SIGSEGV instead of raising RecursionError.
RECURSION_LIMIT = 1000


def pin_recursion_limit() -> None:
    """Undo dependencies' changes to the recursion limit (call after they are imported)."""
    if sys.getrecursionlimit() != RECURSION_LIMIT:
        logger.debug("recursion limit {} reset to {}", sys.getrecursionlimit(), RECURSION_LIMIT)
        sys.setrecursionlimit(RECURSION_LIMIT)


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class RpcResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return jsonrpc.dump(content)


def rpc_response(body: dict[str, Any], status: int = 200, **kw: Any) -> JSONResponse:
    return RpcResponse(body, status_code=status, **kw)


class RpcEndpoint:
    def __init__(self, manager: TaskManager, auth: Authenticator) -> None:
        self._tm = manager
        self._auth = auth
        self._handlers = Handlers(manager)
        self._table = self._handlers.table()
        x402 = manager.settings.x402
        self._protected = set(x402.protected_methods) if x402.enabled else set()

    async def __call__(self, request: Request) -> Response:
        client = self._client(request)
        throttled = self._throttled(request, client)
        if throttled is not None:
            return too_many(throttled)
        limit = self._tm.settings.server.max_body_bytes
        try:
            body = await read_body(request, limit)
        except BodyTooLarge:
            return rpc_response(
                jsonrpc.error(None, jsonrpc.INVALID_REQUEST, f"request body over {limit} bytes"),
                413,
            )
        except ClientDisconnect:  # gone before its body arrived: nobody to answer
            return Response(status_code=400)
        request_id: jsonrpc.RequestId = None
        caller = caller_of(request.scope)
        try:
            rpc = jsonrpc.parse_request(body, max_depth=self._tm.settings.server.max_json_depth)
            request_id = rpc.id
            handler = self._table.get(rpc.method)
            if handler is None:
                raise jsonrpc.method_not_found(rpc.method)
            if caller is None and not self._auth.settings.anonymous_allowed:
                if rpc.method == "message/send":
                    return self._unauthenticated(rpc.id)
                raise SignInRequired(self._unauthenticated_error())
            if rpc.method == "message/send":
                # Before any payment work: nothing is accepted (or charged) that cannot run.
                await self._tm.check_capacity()
            if rpc.method in self._protected:
                return await self._paid(request, rpc, client, caller)
            return rpc_response(jsonrpc.result(rpc.id, await handler(rpc.params, caller)))
        except SignInRequired as exc:
            return await self._sign_in(request_id, exc)
        except Busy as busy:
            QUEUE_REFUSALS.inc()
            return rpc_response(
                jsonrpc.error(request_id, jsonrpc.SERVER_BUSY, busy.reason),
                503,
                headers={"Retry-After": str(busy.retry_after)},
            )
        except RpcError as exc:
            rid = exc.request_id if exc.request_id is not None else request_id
            return rpc_response(jsonrpc.error(rid, exc.code, exc.message, exc.data))
        except Exception:
            logger.exception("unexpected error answering a JSON-RPC request")
            return rpc_response(jsonrpc.error(request_id, jsonrpc.INTERNAL_ERROR, "Internal error"))

    def _client(self, request: Request) -> str:
        limits = self._tm.settings.x402.rate_limit
        peer = request.client.host if request.client else None
        forwarded = request.headers.get("x-forwarded-for")
        return client_key(peer, forwarded, limits.trusted_proxies, limits.ipv6_prefix)

    def _throttled(self, request: Request, client: str) -> Refusal | None:
        """A payment from a client past its refusal budget is turned away before its body
        is read or its header decoded (whatever method it names)."""
        paywall = self._tm.paywall
        if paywall is None or not self._protected:
            return None
        headers = request.headers
        if PAYMENT_SIGNATURE_HEADER not in headers and X_PAYMENT_HEADER not in headers:
            return None
        return paywall.throttled(client)

    def _unauthenticated_error(self) -> RpcError:
        return RpcError(jsonrpc.UNAUTHENTICATED, "Unauthenticated: credentials required")

    def _unauthenticated(self, request_id: jsonrpc.RequestId) -> Response:
        error = self._unauthenticated_error()
        challenge = self._auth.www_authenticate()
        headers = {"WWW-Authenticate": challenge} if challenge else None
        return rpc_response(
            jsonrpc.error(request_id, error.code, error.message), 401, headers=headers
        )

    async def _sign_in(self, request_id: jsonrpc.RequestId, needed: SignInRequired) -> Response:
        """An anonymous caller asked for something only a principal may see: ask them to
        sign in with their wallet (x402 sign-in-with-x, a 402 the SDK's client answers by
        itself), else to authenticate (401), else answer as for an unknown task."""
        sign_in = self._auth.sign_in
        if sign_in is not None:
            body, headers = await sign_in.challenge(
                "sign in with the wallet that paid (SIGN-IN-WITH-X) or authenticate"
            )
            challenge = self._auth.www_authenticate()
            if challenge:
                headers["WWW-Authenticate"] = challenge
            return JSONResponse(body, status_code=402, headers=headers)
        if self._auth.settings.configured:
            return self._unauthenticated(request_id)
        fallback = needed.fallback
        if isinstance(fallback, RpcError):
            return rpc_response(jsonrpc.error(request_id, fallback.code, fallback.message))
        return rpc_response(jsonrpc.result(request_id, fallback))

    async def _paid(
        self, request: Request, rpc: jsonrpc.RpcRequest, client: str, caller: Caller
    ) -> Response:
        # Validate the request before looking at money, so bad input never costs anything.
        params = parse_params(MessageSendParams, rpc.params)
        task_id = new_id()
        self._handlers.new_task(params, task_id)
        push = params.configuration.push_notification_config
        await self._handlers.check_push(push, "configuration.pushNotificationConfig")
        paywall = self._tm.paywall
        if paywall is None or not await paywall.ready():
            PAYWALL_REFUSALS.labels("503").inc()
            return rpc_response(
                jsonrpc.error(
                    rpc.id, jsonrpc.PAYMENT_UNAVAILABLE, "payment facilitator unavailable"
                ),
                503,
            )
        now = utcnow()
        admitted = await paywall.admit(request.headers, task_id, now, client)
        if isinstance(admitted, Refusal):
            if admitted.status == 429:
                return too_many(admitted, rpc.id)
            PAYWALL_REFUSALS.labels(str(admitted.status)).inc()
            if admitted.status == 402:
                body, headers = await paywall.payment_required(admitted.reason)
                return JSONResponse(body, status_code=402, headers=headers)
            return rpc_response(
                jsonrpc.error(rpc.id, jsonrpc.PAYMENT_UNAVAILABLE, admitted.reason), 503
            )
        result = await self._handlers.message_send(
            rpc.params, caller, task_id=task_id, admission=admitted, now=now
        )
        return rpc_response(
            jsonrpc.result(rpc.id, result),
            headers=settlement_headers(result, admitted.record.network),
        )


def too_many(refusal: Refusal, request_id: jsonrpc.RequestId = None) -> JSONResponse:
    """HTTP 429 with Retry-After (whole seconds, rounded up) and a JSON-RPC error saying why."""
    PAYWALL_REFUSALS.labels("429").inc()
    PAYWALL_RATE_LIMITED.labels(refusal.scope or "client").inc()
    seconds = max(1, math.ceil(refusal.retry_after or 1))
    body = jsonrpc.error(
        request_id,
        jsonrpc.RATE_LIMITED,
        f"{refusal.reason}; retry after {seconds} s",
        {"retryAfterSeconds": seconds, "scope": refusal.scope or "client"},
    )
    return rpc_response(body, 429, headers={"Retry-After": str(seconds)})


def settlement_headers(task: dict[str, Any], network: str) -> dict[str, str]:
    """x402's PAYMENT-RESPONSE header once the settle outcome is known (blocking calls)."""
    meta = task.get("metadata", {})
    status = meta.get(META_STATUS)
    if status == PaymentStatus.COMPLETED.value:
        receipt = meta[META_RECEIPTS][0]
        answer = SettleResponse(
            success=True,
            transaction=receipt["transaction"],
            network=network,
            payer=receipt["payer"],
            amount=receipt["amount"],
        )
    elif status == PaymentStatus.FAILED.value:
        answer = SettleResponse(
            success=False, error_reason=meta.get(META_ERROR), transaction="", network=network
        )
    else:
        return {}
    return {PAYMENT_RESPONSE_HEADER: encode_payment_response_header(answer)}


def agent_card(
    settings: Settings, url: str, auth: Authenticator, sign_in: dict[str, Any] | None = None
) -> dict[str, Any]:
    server = settings.server
    card: dict[str, Any] = {
        "name": server.agent_name,
        "description": server.agent_description,
        "url": url,
        "version": __version__,
        "protocolVersion": "0.3.0",
        "preferredTransport": "JSONRPC",
        "capabilities": {"streaming": False, "pushNotifications": True},
        "defaultInputModes": ["text/plain"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": [
            {
                "id": "default",
                "name": server.agent_name,
                "description": server.agent_description,
                "tags": ["agent"],
            }
        ],
    }
    if settings.x402.enabled:
        x402 = settings.x402
        card["x402"] = {
            "network": x402.network,
            "asset": x402.asset,
            "amount": str(x402.amount),
            "payTo": x402.pay_to,
            "protectedMethods": x402.protected_methods,
        }
        if sign_in is not None:
            card["x402"]["extensions"] = sign_in
    card.update(auth.card_security())
    return card


def log_anonymous_access(settings: Settings, auth: Authenticator) -> None:
    """One line at start-up when money is involved and nobody has to authenticate."""
    if not settings.x402.enabled or settings.auth.configured:
        return
    reading = (
        "read, cancel or configure a paid task only after signing in with the wallet "
        "that paid (SIGN-IN-WITH-X)"
        if auth.sign_in is not None
        else "never read, cancel or configure a paid task (AUTH__SIWX=false: no one can)"
    )
    logger.warning(
        "auth: payments on and no API keys or JWKS configured: anonymous callers may send "
        "paid messages and use an unpaid task by its id; they list no tasks, and may {}",
        reading,
    )


def create_app(
    settings: Settings,
    agent: Agent,
    *,
    storage: Storage | None = None,
    services: list[Service] | None = None,
) -> Starlette:
    pin_recursion_limit()  # this module's imports brought py_ecc in
    state: dict[str, Any] = {}
    auth = Authenticator(settings, settings.server.resource_url)

    metrics_socket = bind_metrics_socket(settings.metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        log_anonymous_access(settings, auth)
        sign_in = await auth.sign_in.declaration() if auth.sign_in is not None else None
        async with (
            TaskManager(settings, agent, storage=storage, services=services) as manager,
            AsyncExitStack() as stack,
        ):
            pin_recursion_limit()  # again, should start-up have imported more
            state["manager"] = manager
            state["sign_in"] = sign_in
            state["rpc"] = RpcEndpoint(manager, auth)
            app.state.manager = manager
            if settings.metrics.served:
                gauges = PaymentGauges(manager.storage, settings.metrics.refresh_seconds)
                manager.supervisor.start(gauges)
            if metrics_socket is not None:
                await stack.enter_async_context(
                    serving(metrics_app(settings.metrics), metrics_socket, lifespan="off")
                )
            logger.info(describe(settings.metrics))
            yield

    async def rpc(request: Request) -> Response:
        endpoint: RpcEndpoint = state["rpc"]
        return await endpoint(request)

    async def card(request: Request) -> Response:
        manager: TaskManager = state["manager"]
        return JSONResponse(agent_card(settings, manager.resource_url, auth, state["sign_in"]))

    async def jwks(request: Request) -> Response:
        manager: TaskManager = state["manager"]
        return JSONResponse(manager.signer.jwks())

    async def health(request: Request) -> Response:
        manager: TaskManager = state["manager"]
        paywall = manager.paywall
        draining = manager.draining
        return JSONResponse(
            {
                # A load balancer stops sending work to a draining replica.
                "status": "draining" if draining else "ok",
                "services": manager.supervisor.running,
                "x402": {
                    "enabled": paywall is not None,
                    "ready": bool(paywall and await paywall.ready()),
                },
            },
            status_code=503 if draining else 200,
        )

    return Starlette(
        routes=[
            Route("/", rpc, methods=["POST"]),
            Route("/.well-known/agent.json", card, methods=["GET"]),
            Route("/.well-known/agent-card.json", card, methods=["GET"]),
            # The keys that verify push notifications' JWTs (A2A push notification security).
            Route("/.well-known/jwks.json", jwks, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            metrics_endpoint(settings.metrics, on_main_app=True),
        ],
        middleware=[Middleware(AuthMiddleware, authenticator=auth, paths=frozenset({"/"}))],
        lifespan=lifespan,
    )
