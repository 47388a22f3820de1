"""The operator webhook: delivered with retries while the receiver is down, then arrives."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bindu.metrics import WEBHOOK_FAILURES
from bindu.reconcile.alerts import Alerts
from bindu.server.embedded import bind, serving
from tests.support.waiting import until


def receiver(received: list[dict], failures_first: int) -> Starlette:
    calls = {"n": 0}

    async def hook(request: Request) -> Response:
        calls["n"] += 1
        if calls["n"] <= failures_first:
            return Response(status_code=503)
        received.append(json.loads(await request.body()))
        return Response(status_code=204)

    return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


EVENT = {"event": "payment.orphaned", "paymentId": "p1", "taskId": "t1", "transaction": "0xab"}


async def test_webhook_survives_a_receiver_that_is_down_then_erroring():
    received: list[dict] = []
    sock = bind()  # reserved but not listening yet: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    alerts = Alerts(url, attempts=8, first_delay=0.2)
    try:
        alerts.emit(EVENT)
        async with serving(receiver(received, failures_first=2), sock, lifespan="off"):
            await until(lambda: _nonempty(received), timeout=30, what="webhook delivery")
    finally:
        await alerts.aclose()
    assert received == [EVENT]


async def test_void_is_logged_but_not_posted():
    received: list[dict] = []
    sock = bind()
    async with serving(receiver(received, 0), sock, lifespan="off") as base:
        alerts = Alerts(base + "/hook", first_delay=0.05)
        alerts.emit({**EVENT, "event": "payment.void"})
        alerts.emit({**EVENT, "event": "payment.unresolved"})
        await until(lambda: _nonempty(received), timeout=10, what="unresolved delivery")
        await alerts.aclose()
    assert [e["event"] for e in received] == ["payment.unresolved"]


async def test_a_receiver_that_never_answers_is_given_up_and_counted():
    sock = bind()  # never served
    failures = WEBHOOK_FAILURES._value.get()
    alerts = Alerts(f"http://127.0.0.1:{sock.getsockname()[1]}/hook", attempts=3, first_delay=0.01)
    alerts.emit(EVENT)

    async def gave_up() -> bool:
        return WEBHOOK_FAILURES._value.get() == failures + 1

    await until(gave_up, timeout=10, what="the webhook to give up")
    await alerts.aclose()
    sock.close()


async def _nonempty(items: list) -> bool:
    return bool(items)
