"""A real HTTP receiver for the operator webhook, counting every call (in this process)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bindu.server.embedded import bind, serving


class WebhookReceiver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.url = ""

    def calls_for(self, payment_id: str) -> int:
        return Counter(e.get("paymentId") for e in self.events)[payment_id]

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("taskId") == task_id]

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            self.events.append(json.loads(await request.body()))
            return Response(status_code=204)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    async with serving(receiver.app(), bind(), lifespan="off") as base:
        receiver.url = base + "/hook"
        yield receiver
