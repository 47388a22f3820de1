"""Runs one task: settle first (no free work), then the agent.

Every payment status change is a compare-and-set on the payment record, written in the
same transaction as the task it describes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from loguru import logger
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.a2a import Artifact, Message, Task, TaskState, utcnow
from bindu.agent import Agent, call_agent
from bindu.metrics import AGENT_RUNS, PAYMENTS, TASKS
from bindu.payments.events import TaskListener, alert_events, log_alert, task_notice
from bindu.payments.paywall import Paywall
from bindu.payments.records import (
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
)
from bindu.payments.settle import SettleKind
from bindu.payments.task_meta import with_payment_meta
from bindu.storage.base import Storage


class AgentFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def deliver(agent: Agent, task: Task, *, paid: bool) -> Task:
    """Run the agent on the task's history; the task completed with the agent's artifacts."""
    label = "true" if paid else "false"
    try:
        parts = await call_agent(agent, task.history)
    except Exception as exc:
        AGENT_RUNS.labels("error", label).inc()
        reason = f"agent failed: {type(exc).__name__}: {exc}"[:500]
        logger.warning("agent failed on task {}: {}", task.id, reason)
        raise AgentFailed(reason) from exc
    AGENT_RUNS.labels("ok", label).inc()
    reply = Message(role="agent", parts=parts, task_id=task.id, context_id=task.context_id)
    return task.model_copy(
        update={
            "history": [*task.history, reply],
            "artifacts": [*task.artifacts, Artifact(name="result", parts=parts)],
        }
    ).with_status(TaskState.COMPLETED)


def _ignore(task: Task) -> None:
    return None


class TaskRunner:
    def __init__(
        self,
        storage: Storage,
        agent: Agent,
        paywall: Paywall | None,
        stale_after: timedelta,
        notify: TaskListener = _ignore,
        on_unsettled: Callable[[], None] = lambda: None,
    ) -> None:
        self._storage = storage
        self._agent = agent
        self._paywall = paywall
        self._notify = notify
        self._on_unsettled = on_unsettled  # wakes the reconciler
        # A payment-verified record untouched this long is presumed abandoned (crash).
        self._stale_after = stale_after

    async def run(self, task: Task) -> None:
        """Run a task the queue has leased and stored as ``working``."""
        payment = await self._storage.get_payment_for_task(task.id)
        if payment is not None:
            settled = await self._settle(task, payment)
            if settled is None:
                return
            task, payment = settled
        await self._execute(task, payment)

    async def _settle(self, task: Task, record: PaymentRecord) -> tuple[Task, PaymentRecord] | None:
        if self._paywall is None or record.payload is None or record.requirements is None:
            await self._fail_unsettled(task, record, "payments are not configured on this server")
            return None
        payload = PaymentPayload.model_validate(record.payload)
        requirements = PaymentRequirements.model_validate(record.requirements)
        # Restart the staleness clock now (the task may have waited in the queue), and make
        # sure nobody has judged this payment in the meantime.
        started = await self._storage.transition_payment(
            record.id,
            {PaymentStatus.VERIFIED},
            PaymentUpdate(next_check_at=utcnow() + self._stale_after),
            now=utcnow(),
        )
        if started is None:
            # The reconciler judged this payment (we looked dead): it owns the task now.
            logger.error("payment {} changed before settlement; not settling", record.id)
            return None
        outcome = await self._paywall.settle(payload, requirements)
        now = utcnow()
        if outcome.kind is SettleKind.SETTLED:
            receipt = record.receipt_for(outcome.transaction or "")
            task = with_payment_meta(task, PaymentStatus.COMPLETED, receipt=receipt)
            done = await self._storage.transition_payment(
                record.id,
                {PaymentStatus.VERIFIED},
                PaymentUpdate(
                    status=PaymentStatus.COMPLETED,
                    settle_tx=outcome.transaction,
                    receipt=receipt,
                    answer={"source": "settle", "at": now.isoformat(), **outcome.answer},
                    verdict_at=now,
                ),
                now=now,
                task=task,
                events=[task_notice(task)],
            )
            if done is None:
                # A reconciler judged us dead meanwhile: it owns the payment and the task.
                logger.error("payment {} changed under the worker; not running", record.id)
                return None
            PAYMENTS.labels(PaymentStatus.COMPLETED.value).inc()
            self._notify(task)
            logger.info("payment settled: task={} tx={}", task.id, outcome.transaction)
            return task, done
        reason = outcome.reason or "settle failed"
        await self._fail_unsettled(task, record, reason, outcome.transaction, outcome.answer)
        return None

    async def _fail_unsettled(
        self,
        task: Task,
        record: PaymentRecord,
        reason: str,
        tx: str | None = None,
        answer: dict[str, object] | None = None,
    ) -> None:
        now = utcnow()
        task = with_payment_meta(task, PaymentStatus.FAILED, error=reason)
        task = task.with_status(TaskState.FAILED, f"payment settlement failed: {reason}")
        await self._storage.transition_payment(
            record.id,
            {PaymentStatus.VERIFIED},
            PaymentUpdate(
                status=PaymentStatus.FAILED,
                settle_tx=tx,
                error=reason,
                answer={"source": "settle", "at": now.isoformat(), **(answer or {})},
                next_check_at=now,  # the reconciler's next pass takes it
            ),
            now=now,
            task=task,
            events=[task_notice(task)],
        )
        PAYMENTS.labels(PaymentStatus.FAILED.value).inc()
        TASKS.labels(TaskState.FAILED.value).inc()
        self._notify(task)
        self._on_unsettled()
        logger.warning("payment settle failed: task={} reason={} tx={}", task.id, reason, tx)

    async def _execute(self, task: Task, payment: PaymentRecord | None) -> None:
        try:
            done = await deliver(self._agent, task, paid=payment is not None)
        except AgentFailed as failure:
            failed = task.with_status(TaskState.FAILED, failure.reason)
            if payment is not None:
                await self._orphan_after_agent_failure(failed, payment, failure.reason)
            else:
                await self._storage.save_task(failed, events=[task_notice(failed)])
                self._notify(failed)
            TASKS.labels(TaskState.FAILED.value).inc()
            return
        await self._storage.save_task(done, events=[task_notice(done)])
        self._notify(done)
        TASKS.labels(TaskState.COMPLETED.value).inc()

    async def _orphan_after_agent_failure(
        self, task: Task, payment: PaymentRecord, reason: str
    ) -> None:
        # Money moved (settle succeeded) but no work was delivered: an orphan, known at once.
        now = utcnow()
        task = with_payment_meta(
            task, PaymentStatus.ORPHANED, receipt=payment.receipt, error=reason
        )
        orphaned = payment.evolve(status=PaymentStatus.ORPHANED, verdict_at=now, updated_at=now)
        alerts = alert_events(orphaned, "orphaned", reason, payment.receipt)
        written = await self._storage.transition_payment(
            payment.id,
            {PaymentStatus.COMPLETED},
            PaymentUpdate(status=PaymentStatus.ORPHANED, error=reason, verdict_at=now),
            now=now,
            task=task,
            events=[task_notice(task), *alerts],
        )
        if written is None:
            logger.error("payment {} changed under the worker; its verdict stands", payment.id)
            return
        PAYMENTS.labels(PaymentStatus.ORPHANED.value).inc()
        self._notify(task)
        for alert in alerts:
            log_alert(alert)
