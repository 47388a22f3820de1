"""Notifications that leave the server: A2A push notifications and operator alerts.

They are not sent where a state changes. A writer hands ``OutboxEvent`` values to the
storage write that makes the change; storage keeps them in its outbox table in the same
transaction, only when that write won, once per dedupe ``key``. The outbox service
(``bindu/server/outbox.py``) delivers them later, surviving restarts. The builders here
are pure: they say what to send, never send it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from loguru import logger

from bindu.a2a import Task
from bindu.payments.records import META_STATUS, PaymentRecord, Receipt

EventKind = Literal["push", "webhook"]
PUSH: EventKind = "push"
WEBHOOK: EventKind = "webhook"

# Verdicts that page an operator through the webhook; "void" is only logged.
ALERTED_VERDICTS = frozenset({"orphaned", "unresolved"})

# Something told about a task after a write that won (tests, in-process observers).
TaskListener = Callable[[Task], None]


@dataclass(frozen=True)
class OutboxEvent:
    kind: EventKind
    key: str  # unique: a second event with the same key is dropped by storage
    task_id: str | None
    body: dict[str, Any]

    @property
    def stream(self) -> str:
        """Events of one stream are delivered strictly in the order they were written."""
        return f"{self.kind}:{self.task_id or self.key}"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DROPPED = "dropped"  # given up: refused by the receiver, or attempts exhausted


@dataclass(frozen=True)
class OutboxItem:
    """An event as the outbox holds it, with its delivery state."""

    seq: int  # write order; a stream's events go out in seq order
    kind: EventKind
    key: str
    stream: str
    task_id: str | None
    body: dict[str, Any]
    status: OutboxStatus
    attempts: int
    error: str | None
    created_at: datetime
    next_attempt_at: datetime
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    finished_at: datetime | None = None


def task_notice(task: Task) -> OutboxEvent:
    """The task as its push receiver sees it: no history (it may be long and private to
    the conversation). Once per (task, state, payment status)."""
    status = task.metadata.get(META_STATUS) or "-"
    body = task.model_copy(update={"history": []}).wire()
    return OutboxEvent(PUSH, f"push:{task.id}:{task.state}:{status}", task.id, body)


def payment_alert(
    record: PaymentRecord,
    verdict: str,
    reason: str,
    receipt: Receipt | None,
    attempts: int | None = None,
) -> OutboxEvent:
    """The JSON an operator receives: what happened to which payment, and the proof.
    Once per (payment, verdict)."""
    body = {
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
    return OutboxEvent(WEBHOOK, f"webhook:{record.id}:{verdict}", record.task_id, body)


def alert_events(
    record: PaymentRecord,
    verdict: str,
    reason: str,
    receipt: Receipt | None,
    attempts: int | None = None,
) -> list[OutboxEvent]:
    """The webhook event for a verdict that pages an operator; none for the others."""
    if verdict not in ALERTED_VERDICTS:
        return []
    return [payment_alert(record, verdict, reason, receipt, attempts)]


def log_alert(event: OutboxEvent) -> None:
    """The structured log line of an alert (written after the write that made it won)."""
    body = event.body
    name = body["event"]
    log = logger.error if name == "payment.orphaned" else logger.warning
    log(
        "{}: task={} payment={} payer={} amount={} tx={} reason={}",
        name,
        body.get("taskId"),
        body.get("paymentId"),
        body.get("payer"),
        body.get("amount"),
        body.get("transaction"),
        body.get("reason"),
    )
