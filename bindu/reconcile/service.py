"""The reconciler: a background service of the TaskManager.

Each pass leases due payment records (so replicas never work the same one at once),
probes each once (chain when an RPC URL is configured for its network, else the
facilitator's /verify), asks the pure verdict function, and writes the result with
compare-and-set on the status, together with the task's metadata.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from loguru import logger
from pydantic import ValidationError
from x402.http import HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.a2a import Task, TaskState, utcnow
from bindu.aio import wait_event
from bindu.metrics import CLAIMS_SWEPT, PASS_SECONDS, PAYMENTS, RECONCILE_ERRORS, VERDICTS
from bindu.payments.events import (
    OutboxEvent,
    TaskListener,
    alert_events,
    log_alert,
    task_notice,
)
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.payments.task_meta import with_payment_meta
from bindu.reconcile.evidence import Corrupt, Evidence, ProbeFailure
from bindu.reconcile.fulfil import Fulfil, Fulfilment
from bindu.reconcile.probes import ChainProbe, FacilitatorProbe
from bindu.reconcile.verdict import Decision, Rules, Verdict, decide
from bindu.settings import X402Settings
from bindu.storage.base import Storage

# Batches one pass may take before yielding to the next interval (bounds a pass's length).
MAX_BATCHES_PER_PASS = 20

_STATUS_OF = {
    Verdict.ORPHANED: PaymentStatus.ORPHANED,
    Verdict.VOID: PaymentStatus.VOID,
    Verdict.UNRESOLVED: PaymentStatus.UNRESOLVED,
}


@dataclass(frozen=True)
class Outcome:
    payment_id: str
    task_id: str
    decision: Decision
    written: bool
    # Re-judged and left unresolved on purpose (no proof yet), not a lost write.
    kept: bool = False


async def _no_fulfil(task: Task) -> Task:
    raise RuntimeError("no agent to fulfil with")  # unreachable: policy falls back to record


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Reconciler:
    name = "reconciler"

    def __init__(
        self,
        storage: Storage,
        settings: X402Settings,
        *,
        facilitator: HTTPFacilitatorClient | None,
        owner: str | None = None,
        fulfil: Fulfil | None = None,
        notify: TaskListener | None = None,
        chain: ChainProbe | None = None,
        agent_idempotent: bool = False,
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._config = settings.reconciliation
        self._chain = chain or ChainProbe(settings.rpc_urls, timeout=settings.rpc_timeout_seconds)
        self._facilitator = (
            FacilitatorProbe(facilitator, settings.verify_timeout_seconds) if facilitator else None
        )
        self.owner = owner or default_owner()
        # fulfill may re-run the agent for a settled payment whose run died only when the
        # agent is declared idempotent (SERVER__AGENT_IDEMPOTENT); never otherwise.
        self._agent_idempotent = agent_idempotent
        policy = self._config.policy
        if policy == "fulfill" and fulfil is None:
            logger.warning("policy fulfill needs the agent; this reconciler only records")
            policy = "record"
        self.rules = Rules(
            confirmations=settings.confirmations,
            max_attempts=self._config.max_attempts,
            policy=policy,
            collect_after_seconds=self._config.collect_after_seconds,
            late_answer_seconds=settings.late_answer_seconds,
        )
        self._semaphore = asyncio.Semaphore(self._config.concurrency)
        self._woken = asyncio.Event()
        # In-process observers of a task change that won (the outbox has its notification).
        self._notify: TaskListener = notify or (lambda task: None)
        self._fulfilment = Fulfilment(
            storage,
            fulfil or _no_fulfil,
            facilitator,
            owner=self.owner,
            rules=self.rules,
            settle_timeout=settings.settle_timeout_seconds,
            fulfil_timeout=self._config.fulfil_timeout_seconds,
            notify=self._notify,
        )

    async def run(self) -> None:
        while True:
            try:
                await self.run_pass()
            except Exception:
                # Storage down, say: count it, log it, and try again next interval.
                RECONCILE_ERRORS.labels("pass").inc()
                logger.exception("reconciliation pass failed")
            # Sleep one interval, or less when this process just saw a payment fail.
            await wait_event(self._woken, self._config.interval_seconds)
            self._woken.clear()

    def wake(self) -> None:
        """A payment just failed here: look at it now rather than after the interval."""
        self._woken.set()

    async def close(self) -> None:
        await self._chain.close()

    async def sweep_claims(self, now: datetime) -> list[str]:
        """Delete claims whose /verify never answered (the process died mid-verify): no
        settle was sent and no task exists; the nonce is free again."""
        horizon = self._settings.verify_timeout_seconds + self._config.stale_margin_seconds
        swept = await self._storage.sweep_claims(
            created_before=now - timedelta(seconds=horizon), limit=self._config.batch_size
        )
        if swept:
            CLAIMS_SWEPT.inc(len(swept))
            logger.warning("swept {} stale payment claims: {}", len(swept), ", ".join(swept))
        return swept

    async def run_pass(self, now: datetime | None = None) -> list[Outcome]:
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        await self.sweep_claims(now or utcnow())
        for _ in range(MAX_BATCHES_PER_PASS):
            at = now or utcnow()
            batch = await self._storage.claim_due_payments(
                now=at,
                limit=self._config.batch_size,
                owner=self.owner,
                lease_seconds=self._config.lease_seconds,
            )
            outcomes += await asyncio.gather(*(self._guarded(r, at) for r in batch))
            if len(batch) < self._config.batch_size:
                break
        PASS_SECONDS.observe(time.perf_counter() - started)
        return outcomes

    async def rejudge_unresolved(self, now: datetime | None = None) -> list[Outcome]:
        """Probe the chain again for ``payment-unresolved`` records of networks with an RPC
        URL (``bindu reconcile --once``): a proof found now (a Transfer, a cancellation,
        expiry unused) becomes the verdict; anything short of proof leaves the record as it
        is. Never delivers work (record policy), whatever the configured policy."""
        at = now or utcnow()
        rules = replace(self.rules, policy="record")
        outcomes: list[Outcome] = []
        for record in await self._unresolved():
            if not self._chain.covers(record.network):
                continue
            problem = corruption(record)
            async with self._semaphore:
                evidence = Corrupt(problem) if problem else await self._chain.probe(record)
            decision = decide(record, evidence, at, rules)
            if decision.verdict not in (Verdict.ORPHANED, Verdict.VOID):
                still = Decision(
                    Verdict.UNRESOLVED, f"still unresolved: {decision.reason}", record.attempts
                )
                outcomes.append(Outcome(record.id, record.task_id, still, False, kept=True))
                continue
            written = await self._write(record, decision, evidence, at, leased=False)
            outcomes.append(Outcome(record.id, record.task_id, decision, written))
        return outcomes

    async def _unresolved(self) -> list[PaymentRecord]:
        records: list[PaymentRecord] = []
        page = self._config.batch_size
        while True:
            batch = await self._storage.list_payments(
                statuses=[PaymentStatus.UNRESOLVED], limit=page, offset=len(records)
            )
            records += batch
            if len(batch) < page:
                return records

    async def _guarded(self, record: PaymentRecord, now: datetime) -> Outcome:
        # One payment's trouble (say its task row is unreadable) must not sink the batch:
        # count it; its lease lapses and it is tried again later.
        try:
            return await self._bounded(record, now)
        except Exception as exc:
            RECONCILE_ERRORS.labels("payment").inc()
            logger.exception("reconciling payment {} failed", record.id)
            failed = Decision(Verdict.RETRY, f"error: {type(exc).__name__}", record.attempts)
            return Outcome(record.id, record.task_id, failed, written=False)

    async def _bounded(self, record: PaymentRecord, now: datetime) -> Outcome:
        if record.status is PaymentStatus.FULFILLING:
            # Due while fulfilling: the replica that claimed it died or hung.
            written = await self._fulfilment.abandon(record, now)
            abandoned = Decision(Verdict.RETRY, "fulfilment interrupted", record.attempts)
            return Outcome(record.id, record.task_id, abandoned, written)
        if record.status is PaymentStatus.SETTLED:
            # Paid, and the worker did not deliver within the agent's budget: it died.
            return await self._undelivered(record, now)
        async with self._semaphore:
            evidence = await self._probe(record)
        decision = decide(record, evidence, now, self.rules)
        if decision.verdict in (Verdict.FULFIL, Verdict.COLLECT):
            written = await self._fulfilment.run(record, decision, now)
        else:
            written = await self._write(record, decision, evidence, now)
        return Outcome(record.id, record.task_id, decision, written)

    async def _probe(self, record: PaymentRecord) -> Evidence:
        problem = corruption(record)
        if problem:
            return Corrupt(problem)
        if self._chain.covers(record.network):
            return await self._chain.probe(record)
        if self._facilitator is not None:
            return await self._facilitator.probe(record)
        return ProbeFailure("none", f"no RPC URL and no facilitator for {record.network}")

    async def _write(
        self,
        record: PaymentRecord,
        decision: Decision,
        evidence: Evidence,
        now: datetime,
        *,
        leased: bool = True,
    ) -> bool:
        # Candidates of a pass are leased to this reconciler; a re-judged record is not.
        owner = self.owner if leased else None
        answer: dict[str, Any] = {
            "source": "reconciler",
            "at": now.isoformat(),
            "evidence": type(evidence).__name__,
            "verdict": decision.verdict.value,
            "reason": decision.reason,
        }
        if decision.verdict is Verdict.RETRY and record.status is PaymentStatus.SETTLING:
            return await self._interrupted(record, decision, answer, now)
        if decision.verdict is Verdict.RETRY:
            update = PaymentUpdate(
                attempts=decision.attempts,
                next_check_at=decision.next_check_at,
                answer=answer,
                release_lease=True,
            )
            done = await self._storage.transition_payment(
                record.id, {record.status}, update, now=now, lease_owner=owner
            )
            return done is not None
        status = _STATUS_OF[decision.verdict]
        receipt = decision.receipt
        update = PaymentUpdate(
            status=status,
            attempts=decision.attempts,
            receipt=receipt,
            settle_tx=receipt.transaction if receipt and receipt.transaction else None,
            error=None if status is PaymentStatus.ORPHANED else decision.reason,
            clear_error=status is PaymentStatus.ORPHANED,
            answer=answer,
            verdict_at=now,
            release_lease=True,
        )
        task = await self._task_after(record, status, decision)
        judged = record.evolve(
            status=status,
            attempts=decision.attempts,
            settle_tx=update.settle_tx or record.settle_tx,
            verdict_at=now,
            updated_at=now,
        )
        alerts = alert_events(
            judged, decision.verdict.value, decision.reason, receipt, decision.attempts
        )
        events: list[OutboxEvent] = [*alerts]
        if task is not None:
            events.insert(0, task_notice(task))
        done = await self._storage.transition_payment(
            record.id,
            {record.status},
            update,
            now=now,
            lease_owner=owner,
            task=task,
            events=events,
        )
        if done is None:
            logger.info("verdict for payment {} lost the race; another writer won", record.id)
            return False
        PAYMENTS.labels(status.value).inc()
        VERDICTS.labels(decision.verdict.value).inc()
        _log_verdict(done, decision, receipt, alerts)
        if task is not None:
            self._notify(task)
        return True

    async def _interrupted(
        self, record: PaymentRecord, decision: Decision, answer: dict[str, Any], now: datetime
    ) -> bool:
        """A settle whose worker died (or hung past its deadline) with no proof either way
        yet: a failed settle from now on, judged on the usual backoff. Its /settle may still
        land, so it is never sent again (verdict.settle_in_doubt)."""
        reason = f"settle interrupted (server stopped mid-settle): {decision.reason}"
        update = PaymentUpdate(
            status=PaymentStatus.FAILED,
            attempts=decision.attempts,
            next_check_at=decision.next_check_at,
            error=reason,
            answer={**answer, "from": PaymentStatus.SETTLING.value},
            release_lease=True,
        )
        task = await self._task_after(
            record, PaymentStatus.FAILED, decision, "server stopped during payment settlement"
        )
        done = await self._storage.transition_payment(
            record.id,
            {record.status},
            update,
            now=now,
            lease_owner=self.owner,
            task=task,
            events=[task_notice(task)] if task is not None else [],
        )
        if done is None:
            return False
        PAYMENTS.labels(PaymentStatus.FAILED.value).inc()
        logger.warning("payment {}: {}", record.id, reason)
        if task is not None:
            self._notify(task)
        return True

    async def _undelivered(self, record: PaymentRecord, now: datetime) -> Outcome:
        """A settled payment whose work the worker never delivered (its process died)."""
        why = "the server stopped before the agent finished"
        attempts = record.attempts + 1
        if self.rules.policy == "fulfill" and self._agent_idempotent:
            rerun = Decision(Verdict.FULFIL, f"{why}; re-delivering", attempts, record.receipt)
            written = await self._fulfilment.run(record, rerun, now)
            return Outcome(record.id, record.task_id, rerun, written)
        # A non-idempotent agent may have done part of the work: never a second run.
        reason = f"work not delivered: {why}"
        decision = Decision(Verdict.ORPHANED, reason, attempts, record.receipt)
        update = PaymentUpdate(
            status=PaymentStatus.ORPHANED,
            attempts=attempts,
            error=reason,
            answer={
                "source": "reconciler",
                "at": now.isoformat(),
                "verdict": Verdict.ORPHANED.value,
                "reason": reason,
            },
            verdict_at=now,
            release_lease=True,
        )
        task = await self._task_after(record, PaymentStatus.ORPHANED, decision, reason)
        if task is not None:
            task = with_payment_meta(
                task, PaymentStatus.ORPHANED, receipt=record.receipt, error=reason
            )
        judged = record.evolve(
            status=PaymentStatus.ORPHANED, attempts=attempts, verdict_at=now, updated_at=now
        )
        alerts = alert_events(judged, Verdict.ORPHANED.value, reason, record.receipt, attempts)
        events: list[OutboxEvent] = [*alerts]
        if task is not None:
            events.insert(0, task_notice(task))
        done = await self._storage.transition_payment(
            record.id,
            {record.status},
            update,
            now=now,
            lease_owner=self.owner,
            task=task,
            events=events,
        )
        if done is None:
            logger.info("verdict for payment {} lost the race; another writer won", record.id)
            return Outcome(record.id, record.task_id, decision, False)
        PAYMENTS.labels(PaymentStatus.ORPHANED.value).inc()
        VERDICTS.labels(Verdict.ORPHANED.value).inc()
        for alert in alerts:
            log_alert(alert)
        if task is not None:
            self._notify(task)
        return Outcome(record.id, record.task_id, decision, True)

    async def _task_after(
        self,
        record: PaymentRecord,
        status: PaymentStatus,
        decision: Decision,
        why: str = "server stopped during payment settlement",
    ) -> Task | None:
        task = await self._storage.get_task(record.task_id)
        if task is None:
            return None
        error = None if status is PaymentStatus.ORPHANED else decision.reason
        task = with_payment_meta(task, status, receipt=decision.receipt, error=error)
        if not task.state.terminal:
            # The process died before the work was delivered (mid-settle or mid-run).
            task = task.with_status(TaskState.FAILED, why)
        return task


def _log_verdict(
    record: PaymentRecord, decision: Decision, receipt: Any, alerts: list[OutboxEvent]
) -> None:
    for alert in alerts:
        log_alert(alert)
    if not alerts:  # void: no page, a line
        logger.info(
            "payment.{}: task={} payment={} payer={} amount={} tx={} reason={}",
            decision.verdict.value,
            record.task_id,
            record.id,
            record.payer,
            record.amount,
            receipt.transaction if receipt else record.settle_tx,
            decision.reason,
        )


def corruption(record: PaymentRecord) -> str | None:
    if record.decode_error:
        return record.decode_error
    try:
        PaymentPayload.model_validate(record.payload)
        PaymentRequirements.model_validate(record.requirements)
        bytes.fromhex(record.nonce.removeprefix("0x"))
        int(record.amount)
    except (ValidationError, ValueError, TypeError) as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
