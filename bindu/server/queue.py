"""The durable task queue's workers in this process.

The tasks table is the queue (storage migration 4). A dispatcher leases due tasks
(``claim_due_tasks``) when a local submit wakes it, or every ``SERVER__QUEUE_POLL_SECONDS``
for tasks other replicas queued or a dead process left behind, and runs each under a lease
it renews while the run lasts. A task survives any crash: a submitted one is taken after a
restart, a working one whose lease ran out is resumed by whoever takes it next.

Who decides what happens to an interrupted run (a crash, or shutdown past its grace):
- unpaid: ``failed`` with a reason, or run again when the agent is declared idempotent;
- paid, payment still ``payment-verified``: /settle was never sent (``payment-settling`` is
  stored before it is), so the task is simply run again;
- paid, settled, work not delivered: at shutdown, an orphan verdict and its alert written
  here before exit; after a crash, the reconciler once the agent's time budget passed;
- paid, any other status: the reconciler (the payment's status names its owner).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from loguru import logger

from bindu.a2a import Task, TaskState, utcnow
from bindu.aio import wait_event
from bindu.errors import StorageError
from bindu.metrics import PAYMENTS, TASKS
from bindu.payments.events import alert_events, log_alert, task_notice
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.payments.task_meta import with_payment_meta
from bindu.settings import ServerSettings
from bindu.storage.base import Storage

Run = Callable[[Task], Awaitable[None]]
Listener = Callable[[Task], None]

SHUTDOWN_ORPHAN_REASON = "server shut down before the work was delivered"
UNPAID_SHUTDOWN_REASON = "server shut down before the work was finished"
UNPAID_CRASH_REASON = (
    "interrupted: the server running this task stopped before it finished"
    " (the agent is not declared idempotent, so it is not run again)"
)
# Settled with a hash, work not delivered yet (payment-completed is final: delivered).
_SETTLED = frozenset({PaymentStatus.SETTLED})
# The runner stores payment-settling before it sends /settle, so a record still
# payment-verified proves /settle was never sent: its task is simply run again.
_SETTLE_IS_RECORDED = True
# How long cancelled runs get to write their verdicts at shutdown (seconds).
CANCEL_WRITE_SECONDS = 10.0


class TaskQueue:
    def __init__(
        self,
        storage: Storage,
        settings: ServerSettings,
        run: Run,
        *,
        owner: str,
        notify: Listener,
        idempotent: bool = False,
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._run = run
        self.owner = owner
        self._notify = notify
        self._idempotent = idempotent
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False

    # Life

    def start(self) -> None:
        self._dispatcher = asyncio.create_task(self._dispatch(), name="queue:dispatcher")

    def wake(self) -> None:
        """A task was just queued here: look now rather than at the next poll."""
        self._wake.set()

    @property
    def running(self) -> set[str]:
        return set(self._running)

    def stop_taking(self) -> None:
        """Lease no more tasks; the runs in flight go on."""
        self._stopping = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the runs in flight to finish."""
        runs = list(self._running.values())
        if runs and timeout > 0:
            await asyncio.wait(runs, timeout=timeout)

    async def cancel_all(self) -> None:
        """Cancel what is still running; each run writes its verdict on the way out."""
        if self._dispatcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        runs = list(self._running.values())
        for run in runs:
            run.cancel()
        if runs:
            await asyncio.wait(runs, timeout=CANCEL_WRITE_SECONDS)
            for run in runs:
                if not run.done():
                    logger.error("queue: run {} did not stop in time", run.get_name())

    # Dispatch

    async def _dispatch(self) -> None:
        server = self._settings
        while not self._stopping:
            free = server.workers - len(self._running)
            if free > 0:
                self._wake.clear()
                try:
                    claimed = await self._storage.claim_due_tasks(
                        now=utcnow(),
                        limit=free,
                        owner=self.owner,
                        lease_seconds=server.task_lease_seconds,
                    )
                except Exception:
                    # Storage down: the tasks wait in the table; try again at the next poll.
                    logger.exception("queue: leasing due tasks failed")
                    claimed = []
                for task in claimed:
                    self._running[task.id] = asyncio.create_task(
                        self._take(task), name=f"task:{task.id}"
                    )
                if claimed and len(claimed) == free:
                    continue  # maybe more are due; a finishing run wakes us for them
            await wait_event(self._wake, server.queue_poll_seconds)

    async def _take(self, task: Task) -> None:
        renewer = asyncio.create_task(self._renew(task.id), name=f"lease:{task.id}")
        try:
            if task.state is TaskState.SUBMITTED:
                await self._start(task)
            else:
                await self._resume(task)
            # Finished, or handed to the reconciler: not the queue's any more.
            await self._storage.release_task_lease(task.id, owner=self.owner)
        except asyncio.CancelledError:
            renewer.cancel()
            await self._abandon(task.id)
            raise
        except Exception:
            # Storage trouble mid-run: the lease runs out and the queue resumes it later.
            logger.exception("queue: task {} crashed in the worker", task.id)
        finally:
            renewer.cancel()
            self._running.pop(task.id, None)
            self._wake.set()  # a worker is free

    async def _start(self, task: Task) -> None:
        working = task.with_status(TaskState.WORKING)
        won = await self._storage.transition_task(
            working,
            expected={TaskState.SUBMITTED},
            lease_owner=self.owner,
            events=[task_notice(working)],
        )
        if not won:
            return  # canceled meanwhile, or another replica took it after our lease ran out
        self._notify(working)
        await self._run(working)

    async def _resume(self, task: Task) -> None:
        """A working task whose lease ran out: the process running it died."""
        payment = await self._storage.get_payment_for_task(task.id)
        if payment is None:
            if self._idempotent:
                logger.warning("queue: task {} was interrupted; running it again", task.id)
                await self._run(task)
            else:
                await self._fail(task, UNPAID_CRASH_REASON)
            return
        if payment.status is PaymentStatus.VERIFIED and _SETTLE_IS_RECORDED:
            logger.warning("queue: paid task {} was interrupted before /settle; resuming", task.id)
            await self._run(task)
            return
        logger.info(
            "queue: paid task {} was interrupted ({}); its payment's owner resolves it",
            task.id,
            payment.status,
        )

    async def _renew(self, task_id: str) -> None:
        lease = self._settings.task_lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            try:
                held = await self._storage.renew_task_lease(
                    task_id, owner=self.owner, now=utcnow(), lease_seconds=lease
                )
            except Exception as exc:
                logger.warning("queue: renewing the lease on task {} failed: {}", task_id, exc)
                continue
            if not held:
                if task_id in self._running:
                    logger.warning("queue: lost the lease on task {}", task_id)
                return

    # Interrupted runs

    async def _fail(self, task: Task, reason: str) -> None:
        failed = task.with_status(TaskState.FAILED, reason)
        if await self._storage.transition_task(
            failed,
            expected={TaskState.WORKING},
            lease_owner=self.owner,
            events=[task_notice(failed)],
        ):
            TASKS.labels(TaskState.FAILED.value).inc()
            self._notify(failed)
            logger.warning("task {} failed: {}", task.id, reason)

    async def _abandon(self, task_id: str) -> None:
        """Shutdown cancelled this run: leave every state with its owner, now."""
        try:
            await self._abandon_unguarded(task_id)
        except (StorageError, OSError) as exc:
            logger.error("queue: could not record the end of task {}: {}", task_id, exc)

    async def _abandon_unguarded(self, task_id: str) -> None:
        task = await self._storage.get_task(task_id)
        if task is None or task.state.terminal or task.state is not TaskState.WORKING:
            await self._storage.release_task_lease(task_id, owner=self.owner)
            return
        payment = await self._storage.get_payment_for_task(task_id)
        if payment is None:
            if self._idempotent:
                await self._requeue(task)
            else:
                await self._fail(task, UNPAID_SHUTDOWN_REASON)
            return
        if payment.status is PaymentStatus.VERIFIED and _SETTLE_IS_RECORDED:
            await self._requeue(task)  # /settle never sent: the next worker runs it
        elif payment.status in _SETTLED:
            await self._orphan(task, payment, SHUTDOWN_ORPHAN_REASON)
        else:
            # Settle in flight or failed: the reconciler proves what happened.
            await self._storage.release_task_lease(task_id, owner=self.owner)

    async def _requeue(self, task: Task) -> None:
        queued = task.with_status(TaskState.SUBMITTED)
        if await self._storage.transition_task(
            queued, expected={TaskState.WORKING}, lease_owner=self.owner
        ):
            await self._storage.release_task_lease(task.id, owner=self.owner)
            logger.info("task {} goes back to the queue (shutdown)", task.id)

    async def _orphan(self, task: Task, payment: PaymentRecord, reason: str) -> None:
        now = utcnow()
        failed = with_payment_meta(
            task.with_status(TaskState.FAILED, reason),
            PaymentStatus.ORPHANED,
            receipt=payment.receipt,
            error=reason,
        )
        orphaned = payment.evolve(status=PaymentStatus.ORPHANED, verdict_at=now, updated_at=now)
        alerts = alert_events(orphaned, "orphaned", reason, payment.receipt)
        done = await self._storage.transition_payment(
            payment.id,
            {payment.status},
            PaymentUpdate(status=PaymentStatus.ORPHANED, error=reason, verdict_at=now),
            now=now,
            task=failed,
            events=[task_notice(failed), *alerts],
        )
        if done is None:
            logger.info("payment {} moved on meanwhile; its new owner resolves it", payment.id)
            return
        PAYMENTS.labels(PaymentStatus.ORPHANED.value).inc()
        TASKS.labels(TaskState.FAILED.value).inc()
        for alert in alerts:
            log_alert(alert)
        self._notify(failed)
