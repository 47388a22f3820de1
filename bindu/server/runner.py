"""Runs one task: settle first (no free work), then the agent under its time budget.

The worker walks the payment through the lifecycle (bindu.payments.lifecycle):
payment-verified → payment-settling (the worker holds the record with a lease until its
settle deadline) → payment-settled (the lease now runs to the agent's budget) →
payment-completed, written in one transaction with the delivered task. Every step is a
compare-and-set that loses once a reconciler has taken the record over after a deadline;
side effects (metrics, notifications, alerts, log lines claiming an outcome) follow only a
write that won.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.a2a import Artifact, Message, Task, TaskState, utcnow
from bindu.agent import Agent, AgentFailed, call_agent
from bindu.failpoints import failpoint
from bindu.metrics import AGENT_RUNS, PAYMENTS, TASKS
from bindu.payments.events import TaskListener, alert_events, log_alert, task_notice
from bindu.payments.paywall import Paywall
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.payments.settle import SettleKind, SettleOutcome
from bindu.payments.task_meta import with_payment_meta
from bindu.storage.base import Storage

S = PaymentStatus

# What the reconciler is told when a paid run ends without delivering its work.
NOT_DELIVERED = "work not delivered"


async def deliver(agent: Agent, task: Task, *, paid: bool, budget: float | None = None) -> Task:
    """Run the agent on the task's history within ``budget`` seconds; the task completed
    with the agent's artifacts. Raises AgentFailed (the agent raised, or overran)."""
    label = "true" if paid else "false"
    try:
        async with asyncio.timeout(budget):
            parts = await call_agent(agent, task.history)
    except TimeoutError as exc:
        AGENT_RUNS.labels("timeout", label).inc()
        reason = f"agent exceeded its time budget of {budget:g}s"
        logger.warning("agent timed out on task {}: {}", task.id, reason)
        raise AgentFailed(reason) from exc
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


def settle_answer(outcome: SettleOutcome, at: datetime, **extra: Any) -> dict[str, Any]:
    """A settle answer as kept on the record: the facilitator's words under their own key,
    so they can never overwrite our markers (source, at, ...)."""
    return {
        "source": "settle",
        "at": at.isoformat(),
        "kind": outcome.kind.value,
        "answered": outcome.answered,
        **extra,
        "response": outcome.answer,
    }


@dataclass(frozen=True)
class Deadlines:
    """How long the worker holds a payment at each step before the reconciler may take it."""

    settle: timedelta  # settle timeout + late-answer window + margin
    agent: timedelta  # agent budget + margin
    agent_budget: float  # seconds


class TaskRunner:
    def __init__(
        self,
        storage: Storage,
        agent: Agent,
        paywall: Paywall | None,
        deadlines: Deadlines,
        notify: TaskListener = _ignore,
        on_unsettled: Callable[[], None] = lambda: None,
        owner: str | None = None,
    ) -> None:
        self._storage = storage
        self._agent = agent
        self._paywall = paywall
        self._notify = notify
        self._on_unsettled = on_unsettled  # wakes the reconciler
        self._deadlines = deadlines
        # The lease holder's name on records this process is settling or working on.
        self.owner = owner or f"worker:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._listening: set[asyncio.Task[None]] = set()  # late settle answers

    async def run(self, task: Task) -> None:
        """Run a task the queue has leased and stored as ``working``."""
        payment = await self._storage.get_payment_for_task(task.id)
        if payment is not None:
            settled = await self._settle(task, payment)
            if settled is None:
                return
            task, payment = settled
            await failpoint("after-settled")
        await self._execute(task, payment)

    # Settle

    async def _settle(self, task: Task, record: PaymentRecord) -> tuple[Task, PaymentRecord] | None:
        if self._paywall is None or record.payload is None or record.requirements is None:
            await self._fail_unsettled(
                task, record, {S.VERIFIED}, "payments are not configured on this server"
            )
            return None
        payload = PaymentPayload.model_validate(record.payload)
        requirements = PaymentRequirements.model_validate(record.requirements)
        now = utcnow()
        deadline = now + self._deadlines.settle
        # Ours until the deadline (the lease): a reconciler may take it only after that,
        # and then our later writes lose.
        settling = await self._storage.transition_payment(
            record.id,
            {S.VERIFIED},
            PaymentUpdate(
                status=S.SETTLING,
                next_check_at=deadline,
                lease_to=self.owner,
                lease_until=deadline,
            ),
            now=now,
            task=with_payment_meta(task, S.SETTLING),
        )
        if settling is None:
            logger.error("payment {} changed before settlement; not settling", record.id)
            return None
        outcome, late = await self._paywall.settle(payload, requirements)
        await failpoint("after-settle-sent")
        now = utcnow()
        check_at = now
        if late is not None and not self._paywall.settings.rpc_urls.get(record.network):
            # Facilitator-only, the late answer is the only proof there may ever be: the
            # reconciler waits for it (and is woken early when the answer comes).
            check_at = now + timedelta(seconds=self._paywall.settings.late_answer_seconds)
        if outcome.kind is SettleKind.SETTLED:
            return await self._settled(task, settling, outcome, now)
        reason = outcome.reason or "settle failed"
        await self._fail_unsettled(
            task, settling, {S.SETTLING}, reason, outcome, now, check_at=check_at
        )
        if late is not None:
            self._listen_late(record, late)  # after the write, so the answer lands on it
        return None

    async def _settled(
        self, task: Task, record: PaymentRecord, outcome: SettleOutcome, now: datetime
    ) -> tuple[Task, PaymentRecord] | None:
        receipt = record.receipt_for(outcome.transaction or "")
        task = with_payment_meta(task, S.SETTLED, receipt=receipt)
        deadline = now + self._deadlines.agent
        answer = settle_answer(outcome, now)
        done = await self._storage.transition_payment(
            record.id,
            {S.SETTLING},
            PaymentUpdate(
                status=S.SETTLED,
                settle_tx=outcome.transaction,
                receipt=receipt,
                answer=answer,
                next_check_at=deadline,
                lease_to=self.owner,
                lease_until=deadline,
            ),
            now=now,
            lease_owner=self.owner,  # loses if a reconciler took the record over
            task=task,
            events=[task_notice(task)],
        )
        if done is None:
            # Judged by a reconciler meanwhile: it owns payment and task. Our answer is
            # still the best evidence there is; keep it for its verdict.
            await self._keep_evidence(record, answer, outcome.transaction)
            logger.error("payment {} was taken over while settling; not running", record.id)
            return None
        PAYMENTS.labels(S.SETTLED.value).inc()
        self._notify(task)
        logger.info("payment settled: task={} tx={}", task.id, outcome.transaction)
        return task, done

    async def _fail_unsettled(
        self,
        task: Task,
        record: PaymentRecord,
        expected: set[PaymentStatus],
        reason: str,
        outcome: SettleOutcome | None = None,
        now: datetime | None = None,
        check_at: datetime | None = None,
    ) -> None:
        now = now or utcnow()
        task = with_payment_meta(task, S.FAILED, error=reason)
        task = task.with_status(TaskState.FAILED, f"payment settlement failed: {reason}")
        if outcome is None:
            answer: dict[str, Any] = {"source": "settle", "at": now.isoformat(), "sent": False}
        else:
            answer = settle_answer(outcome, now)
        written = await self._storage.transition_payment(
            record.id,
            expected,
            PaymentUpdate(
                status=S.FAILED,
                settle_tx=outcome.transaction if outcome else None,
                error=reason,
                answer=answer,
                next_check_at=check_at or now,  # the reconciler's from then on
                release_lease=True,
            ),
            now=now,
            lease_owner=self.owner if S.SETTLING in expected else None,
            task=task,
            events=[task_notice(task)],
        )
        if written is None:
            logger.error("payment {} was taken over while settling", record.id)
            return
        PAYMENTS.labels(S.FAILED.value).inc()
        TASKS.labels(TaskState.FAILED.value).inc()
        self._notify(task)
        self._on_unsettled()
        tx = outcome.transaction if outcome else None
        logger.warning("payment settle failed: task={} reason={} tx={}", task.id, reason, tx)

    def _listen_late(self, record: PaymentRecord, late: asyncio.Task[SettleOutcome | None]) -> None:
        listener = asyncio.create_task(self._late_answer(record, late), name="settle:late")
        self._listening.add(listener)
        listener.add_done_callback(self._listening.discard)

    async def _late_answer(
        self, record: PaymentRecord, late: asyncio.Task[SettleOutcome | None]
    ) -> None:
        """The settle answer that came after the deadline: evidence for the reconciler."""
        outcome = await late
        if outcome is None:
            return
        now = utcnow()
        logger.info(
            "late settle answer for payment {}: {} tx={}",
            record.id,
            outcome.kind,
            outcome.transaction,
        )
        await self._keep_evidence(
            record, settle_answer(outcome, now, late=True), outcome.transaction
        )
        self._on_unsettled()

    async def _keep_evidence(
        self, record: PaymentRecord, answer: dict[str, Any], tx: str | None
    ) -> None:
        current = await self._storage.get_payment(record.id)
        if current is None or current.status not in _EVIDENCE_STATUSES:
            logger.warning(
                "settle answer for payment {} arrived after its verdict ({}): tx={} answer={}",
                record.id,
                current.status if current else "gone",
                tx,
                answer.get("response"),
            )
            return
        now = utcnow()
        await self._storage.transition_payment(
            record.id,
            {current.status},
            # A failed record waiting for this answer is due now: judge it with it.
            PaymentUpdate(
                answer=answer,
                settle_tx=tx,
                next_check_at=now if current.status is S.FAILED else None,
            ),
            now=now,
        )

    # The agent

    async def _execute(self, task: Task, payment: PaymentRecord | None) -> None:
        budget = self._deadlines.agent_budget
        try:
            done = await deliver(self._agent, task, paid=payment is not None, budget=budget)
        except AgentFailed as failure:
            await self._failed_run(task, payment, failure.reason)
            return
        # A cancel (shutdown past its grace) is the queue's to record: TaskQueue._abandon.
        await failpoint("after-agent")
        if payment is None:
            await self._storage.save_task(done, events=[task_notice(done)])
            self._notify(done)
            TASKS.labels(TaskState.COMPLETED.value).inc()
            return
        now = utcnow()
        done = with_payment_meta(done, S.COMPLETED, receipt=payment.receipt)
        written = await self._storage.transition_payment(
            payment.id,
            {S.SETTLED},
            PaymentUpdate(status=S.COMPLETED, verdict_at=now, release_lease=True),
            now=now,
            lease_owner=self.owner,
            task=done,
            events=[task_notice(done)],
        )
        if written is None:
            logger.error(
                "payment {}: the work finished after the reconciler took it over; not delivered",
                payment.id,
            )
            return
        PAYMENTS.labels(S.COMPLETED.value).inc()
        TASKS.labels(TaskState.COMPLETED.value).inc()
        self._notify(done)

    async def _failed_run(self, task: Task, payment: PaymentRecord | None, why: str) -> None:
        failed = task.with_status(TaskState.FAILED, why)
        if payment is None:
            await self._storage.save_task(failed, events=[task_notice(failed)])
            TASKS.labels(TaskState.FAILED.value).inc()
            self._notify(failed)
            return
        # Money moved (settle succeeded) but no work was delivered: an orphan, known at once.
        now = utcnow()
        reason = f"{NOT_DELIVERED}: {why}"
        failed = with_payment_meta(failed, S.ORPHANED, receipt=payment.receipt, error=reason)
        orphaned = payment.evolve(status=S.ORPHANED, verdict_at=now, updated_at=now)
        alerts = alert_events(orphaned, "orphaned", reason, payment.receipt)
        written = await self._storage.transition_payment(
            payment.id,
            {S.SETTLED},
            PaymentUpdate(status=S.ORPHANED, error=reason, verdict_at=now, release_lease=True),
            now=now,
            lease_owner=self.owner,
            task=failed,
            events=[task_notice(failed), *alerts],
        )
        if written is None:
            logger.error("payment {} was taken over while its agent ran", payment.id)
            return
        PAYMENTS.labels(S.ORPHANED.value).inc()
        TASKS.labels(TaskState.FAILED.value).inc()
        self._notify(failed)
        for alert in alerts:
            log_alert(alert)

    async def aclose(self) -> None:
        """Stop listening for late settle answers (shutdown)."""
        for listener in list(self._listening):
            listener.cancel()
        if self._listening:
            await asyncio.wait(list(self._listening))


# Where a settle answer that arrived late (or lost its race) is still worth keeping.
_EVIDENCE_STATUSES = frozenset({S.SETTLING, S.FAILED, S.FULFILLING, S.SETTLED})
