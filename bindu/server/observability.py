"""``/metrics`` for operators: who may scrape it, where it listens, and the payment gauges
refreshed in the background (a GROUP BY over payments per scrape would let anyone who can
scrape load the database)."""

from __future__ import annotations

import asyncio
import hmac
import socket

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bindu.a2a import utcnow
from bindu.errors import SettingsError
from bindu.metrics import PAYMENT_GAUGE_REFRESHES, record_payment_stats
from bindu.settings import MetricsSettings
from bindu.storage.base import Storage


class PaymentGauges:
    """Supervised service: sets the per-status payment gauges every ``refresh_seconds``."""

    name = "payment-gauges"

    def __init__(self, storage: Storage, refresh_seconds: float) -> None:
        self._storage = storage
        self._interval = refresh_seconds

    async def refresh(self) -> None:
        record_payment_stats(await self._storage.payment_stats(), utcnow())
        PAYMENT_GAUGE_REFRESHES.inc()

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # storage down: keep the last values, try again later
                logger.warning("metrics: payment gauges not refreshed: {}", exc)
            await asyncio.sleep(self._interval)


def metrics_endpoint(settings: MetricsSettings, *, on_main_app: bool) -> Route:
    """``GET /metrics``; on the main app it exists only when a token guards it."""
    expected = settings.token.get_secret_value().encode() if settings.token else None
    hidden = on_main_app and (settings.port is not None or expected is None)

    async def metrics(request: Request) -> Response:
        if hidden:
            return PlainTextResponse("Not Found", status_code=404)
        if expected is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), expected
            ):
                return PlainTextResponse(
                    "a bearer token is required",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
                )
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", metrics, methods=["GET"])


def metrics_app(settings: MetricsSettings) -> Starlette:
    """The app served on METRICS__HOST:METRICS__PORT, beside the main one."""
    return Starlette(routes=[metrics_endpoint(settings, on_main_app=False)])


def bind_metrics_socket(settings: MetricsSettings) -> socket.socket | None:
    """The metrics listener's socket, bound now so a taken port stops start-up with one line."""
    if settings.port is None:
        return None
    try:
        info = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(info[4])
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        raise SettingsError(
            f"METRICS__PORT: cannot listen on {where}: {exc.strerror or exc}"
        ) from None
    return sock


def describe(settings: MetricsSettings) -> str:
    if settings.port is not None:
        guard = "a bearer token" if settings.token else "no token"
        return f"metrics: served on http://{settings.host}:{settings.port}/metrics ({guard})"
    if settings.token is not None:
        return "metrics: served on /metrics of the main app, bearer token required"
    return "metrics: not served (set METRICS__TOKEN, or METRICS__PORT for a listener of its own)"
