"""The fulfill policy: deliver the work of a payment proven paid (or settle a still-valid
authorization first), at most once per payment across replicas and restarts.

Exactly-once comes from two durable steps: a compare-and-set into ``payment-fulfilling``
(only one replica wins) and an ``agent`` marker written before the agent runs. A
fulfilment that dies after the marker is never retried: the payment falls back to the
``record`` outcome (orphaned, alerted) instead of risking a second run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from x402.http import HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.a2a import Task, TaskState, utcnow
from bindu.agent import AgentFailed
from bindu.metrics import PAYMENTS, VERDICTS
from bindu.payments.events import TaskListener, alert_events, log_alert, task_notice
from bindu.payments.records import (
    META_RECOVERED,
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
    Receipt,
)
from bindu.payments.settle import SettleKind, settle_with_deadline
from bindu.payments.task_meta import with_payment_meta
from bindu.reconcile.verdict import Decision, Rules, Verdict, next_check
from bindu.storage.base import Storage

Fulfil = Callable[[Task], Awaitable[Task]]


class Fulfilment:
    def __init__(
        self,
        storage: Storage,
        fulfil: Fulfil,
        facilitator: HTTPFacilitatorClient | None,
        *,
        owner: str,
        rules: Rules,
        settle_timeout: float,
        fulfil_timeout: float,
        notify: TaskListener,
    ) -> None:
        self._storage = storage
        self._fulfil = fulfil
        self._facilitator = facilitator
        self._owner = owner
        self._rules = rules
        self._settle_timeout = settle_timeout
        self._fulfil_timeout = fulfil_timeout
        self._notify = notify

    async def run(self, record: PaymentRecord, decision: Decision, now: datetime) -> bool:
        """Claim the payment, settle it if asked (COLLECT), then run the agent once."""
        task = await self._storage.get_task(record.task_id)
        if task is None or task.state is TaskState.CANCELED:
            return False
        receipt = decision.receipt
        working = with_payment_meta(
            task.with_status(TaskState.WORKING), PaymentStatus.FULFILLING, receipt=receipt
        )
        claimed = await self._storage.transition_payment(
            record.id,
            {record.status},
            PaymentUpdate(
                status=PaymentStatus.FULFILLING,
                attempts=decision.attempts,
                receipt=receipt,
                settle_tx=receipt.transaction if receipt and receipt.transaction else None,
                answer=_answer("claim", now, verdict=decision.verdict.value),
                next_check_at=now + timedelta(seconds=self._fulfil_timeout),
                release_lease=True,
            ),
            now=now,
            lease_owner=self._owner,
            task=working,
            events=[task_notice(working)],
        )
        if claimed is None:
            return False
        self._notify(working)
        if decision.verdict is Verdict.COLLECT:
            receipt = await self._collect(claimed, decision)
            if receipt is None:
                return True
        if receipt is None:  # a FULFIL decision always carries one; never run unpaid
            logger.error("fulfil: payment {} has no receipt; not running the agent", record.id)
            return True
        marked = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.FULFILLING},
            PaymentUpdate(receipt=receipt, answer=_answer("agent", utcnow())),
            now=utcnow(),
        )
        if marked is None:
            return True  # presumed dead and taken back meanwhile: do not run
        await self._deliver(marked, working, receipt)
        return True

    async def _collect(self, record: PaymentRecord, decision: Decision) -> Receipt | None:
        """Settle a still-valid authorization; None (and the record back to failed) if not."""
        if self._facilitator is None:
            outcome_reason, tx, answer = "no facilitator configured", None, {}
        else:
            outcome = await settle_with_deadline(
                self._facilitator.settle(
                    PaymentPayload.model_validate(record.payload),
                    PaymentRequirements.model_validate(record.requirements),
                ),
                self._settle_timeout,
            )
            if outcome.kind is SettleKind.SETTLED:
                return record.receipt_for(outcome.transaction or "")
            outcome_reason, tx, answer = (
                outcome.reason or "settle failed",
                outcome.transaction,
                {"answered": outcome.answered, "response": outcome.answer},
            )
        now = utcnow()
        written = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.FULFILLING},
            PaymentUpdate(
                status=PaymentStatus.FAILED,
                settle_tx=tx,
                error=outcome_reason,
                answer=_answer("settle", now, **answer),
                next_check_at=next_check(record, decision.attempts, now, self._rules),
            ),
            now=now,
        )
        if written is not None:
            logger.warning(
                "fulfil: late settle of payment {} failed: {}", record.id, outcome_reason
            )
        return None

    async def _deliver(self, record: PaymentRecord, task: Task, receipt: Receipt) -> None:
        try:
            done = await self._fulfil(task)
        except AgentFailed as failure:
            await self._orphan(record, task, receipt, failure.reason)
            return
        now = utcnow()
        done = with_payment_meta(done, PaymentStatus.COMPLETED, receipt=receipt)
        done.metadata[META_RECOVERED] = True
        written = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.FULFILLING},
            PaymentUpdate(
                status=PaymentStatus.COMPLETED,
                clear_error=True,
                answer=_answer("delivered", now),
                verdict_at=now,
            ),
            now=now,
            task=done,
            events=[task_notice(done)],
        )
        if written is None:
            logger.error("fulfil: payment {} was taken back while its agent ran", record.id)
            return
        PAYMENTS.labels(PaymentStatus.COMPLETED.value).inc()
        VERDICTS.labels("fulfilled").inc()
        self._notify(done)
        logger.info("payment.fulfilled: task={} tx={}", record.task_id, receipt.transaction)

    async def _orphan(self, record: PaymentRecord, task: Task, receipt: Receipt, why: str) -> None:
        now = utcnow()
        reason = f"fulfilment failed: {why}"
        failed = with_payment_meta(
            task.with_status(TaskState.FAILED, reason),
            PaymentStatus.ORPHANED,
            receipt=receipt,
            error=reason,
        )
        orphaned = record.evolve(status=PaymentStatus.ORPHANED, verdict_at=now, updated_at=now)
        alerts = alert_events(orphaned, Verdict.ORPHANED.value, reason, receipt)
        written = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.FULFILLING},
            PaymentUpdate(status=PaymentStatus.ORPHANED, error=reason, verdict_at=now),
            now=now,
            task=failed,
            events=[task_notice(failed), *alerts],
        )
        if written is not None:
            PAYMENTS.labels(PaymentStatus.ORPHANED.value).inc()
            VERDICTS.labels(Verdict.ORPHANED.value).inc()
            self._notify(failed)
            for alert in alerts:
                log_alert(alert)

    async def abandon(self, record: PaymentRecord, now: datetime) -> bool:
        """A fulfilment whose process died: back to payment-failed for a normal verdict."""
        reason = "fulfilment interrupted; its agent will not run again"
        written = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.FULFILLING},
            PaymentUpdate(
                status=PaymentStatus.FAILED,
                error=reason,
                answer=_answer("abandoned", now),
                next_check_at=now,
                release_lease=True,
            ),
            now=now,
            lease_owner=self._owner,
        )
        if written is not None:
            logger.warning("fulfil: payment {}: {}", record.id, reason)
        return written is not None


def _answer(phase: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {"source": "fulfil", "phase": phase, "at": at.isoformat(), **extra}
