"""Operator alerts: a structured log event always, and a webhook POST when configured.

Webhook deliveries run in the background with retries and backoff, so a slow or dead
receiver never holds up a reconciliation pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx
from loguru import logger

from bindu.metrics import WEBHOOK_FAILURES
from bindu.payments.records import PaymentRecord, Receipt

# Delivery attempts per event and the first retry delay, doubled each time (seconds).
WEBHOOK_ATTEMPTS = 6
WEBHOOK_FIRST_DELAY_SECONDS = 1.0
WEBHOOK_TIMEOUT_SECONDS = 10.0
# Events that page an operator; "void" is logged only.
WEBHOOK_EVENTS = frozenset({"payment.orphaned", "payment.unresolved"})


class Alerts:
    def __init__(
        self,
        webhook_url: str | None,
        *,
        attempts: int = WEBHOOK_ATTEMPTS,
        first_delay: float = WEBHOOK_FIRST_DELAY_SECONDS,
    ) -> None:
        self._url = webhook_url
        self._attempts = attempts
        self._first_delay = first_delay
        self._http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_SECONDS) if webhook_url else None
        self._pending: set[asyncio.Task[None]] = set()

    def emit(self, event: dict[str, Any]) -> None:
        name = event["event"]
        log = logger.error if name == "payment.orphaned" else logger.warning
        if name == "payment.void":
            log = logger.info
        log(
            "{}: task={} payment={} payer={} amount={} tx={} reason={}",
            name,
            event.get("taskId"),
            event.get("paymentId"),
            event.get("payer"),
            event.get("amount"),
            event.get("transaction"),
            event.get("reason"),
        )
        if self._http is not None and self._url is not None and name in WEBHOOK_EVENTS:
            task = asyncio.create_task(self._deliver(self._http, self._url, event))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _deliver(self, http: httpx.AsyncClient, url: str, event: dict[str, Any]) -> None:
        delay = self._first_delay
        for attempt in range(1, self._attempts + 1):
            try:
                response = await http.post(url, json=event)
                if response.status_code < 300:
                    return
                problem = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            logger.warning("webhook attempt {} failed: {}", attempt, problem)
            if attempt < self._attempts:
                await asyncio.sleep(delay)
                delay *= 2
        WEBHOOK_FAILURES.inc()
        logger.error("webhook gave up on {} for payment {}", event["event"], event.get("paymentId"))

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for deliveries in flight, then give up on the rest."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)
        for task in list(self._pending):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self, timeout: float = 5.0) -> None:
        await self.drain(timeout)
        if self._http is not None:
            await self._http.aclose()


def payment_event(
    record: PaymentRecord,
    verdict: str,
    reason: str,
    receipt: Receipt | None,
    attempts: int | None = None,
) -> dict[str, Any]:
    """The JSON an operator receives: what happened to which payment, and the proof."""
    return {
        "event": f"payment.{verdict}",
        "paymentId": record.id,
        "taskId": record.task_id,
        "status": record.status.value,
        "payer": record.payer,
        "payTo": record.pay_to,
        "amount": record.amount,
        "asset": record.asset,
        "network": record.network,
        "transaction": receipt.transaction if receipt else record.settle_tx,
        "blockNumber": receipt.block_number if receipt else None,
        "reason": reason,
        "attempts": attempts if attempts is not None else record.attempts,
        "at": (record.verdict_at or record.updated_at).isoformat(),
    }
