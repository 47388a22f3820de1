"""TaskManager: the async context manager that owns storage, the durable task queue and its
workers, the paywall, and the background services; and the server's graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta
from types import TracebackType

from loguru import logger

from bindu.a2a import Task, TaskState
from bindu.agent import Agent
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.paywall import Paywall
from bindu.reconcile.service import Reconciler, default_owner
from bindu.server.outbox import OutboxService
from bindu.server.queue import TaskQueue
from bindu.server.runner import Deadlines, TaskRunner, deliver
from bindu.server.services import Service, Supervisor
from bindu.settings import Settings
from bindu.signing import PushSigner
from bindu.storage.base import Storage
from bindu.storage.factory import create_storage

_OPEN_STATES = frozenset({TaskState.SUBMITTED, TaskState.WORKING})
# How long shutdown spends delivering notifications that are due (seconds).
OUTBOX_FLUSH_SECONDS = 2.0


class Busy(Exception):
    """The server takes no new work now (draining for shutdown, or its queue is full)."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class TaskManager:
    def __init__(
        self,
        settings: Settings,
        agent: Agent,
        *,
        storage: Storage | None = None,
        services: list[Service] | None = None,
    ) -> None:
        self.settings = settings
        self.agent = agent
        self.storage: Storage = storage or create_storage(settings.storage)
        self.paywall: Paywall | None = None
        self._extra_services = services or []
        self._finished = asyncio.Event()  # replaced each time a run here finishes
        self.queue: TaskQueue | None = None
        self.owner = default_owner()  # this process, in task and payment leases
        self.supervisor = Supervisor()
        self.reconciler: Reconciler | None = None
        # Signs push notifications; its public key is served at /.well-known/jwks.json.
        self.signer = PushSigner.from_settings(
            settings.push.signing_key_file, issuer=self.resource_url
        )
        # Delivers the push notifications and webhooks that writes leave in storage.
        self.outbox = OutboxService(
            self.storage,
            settings.outbox,
            settings.push,
            self.signer,
            webhook_url=settings.x402.reconciliation.webhook_url,
        )
        # Set once shutdown begins (SIGTERM or the lifespan's end): no new work after it.
        self._shutdown_deadline: float | None = None
        self._stopped = asyncio.Event()  # blocking waits return at once after this
        self._runner: TaskRunner | None = None

    @property
    def deadlines(self) -> Deadlines:
        """How long a worker holds a payment at each step before the reconciler may take
        it over (bindu.payments.lifecycle: every state has an owner and a deadline)."""
        x402, server = self.settings.x402, self.settings.server
        margin = x402.reconciliation.stale_margin_seconds
        settle = x402.settle_timeout_seconds + x402.late_answer_seconds + margin
        return Deadlines(
            settle=timedelta(seconds=settle),
            agent=timedelta(seconds=server.agent_timeout_seconds + margin),
            agent_budget=server.agent_timeout_seconds,
        )

    async def __aenter__(self) -> TaskManager:
        await self.storage.open()
        self.storage.watch_events(self.outbox.wake)
        x402 = self.settings.x402
        if x402.enabled:
            self.paywall = Paywall(
                x402, self.storage, make_facilitator_client(x402), self.resource_url
            )
            await self.paywall.ready()  # a facilitator that is down is retried per request
            if x402.reconciliation.enabled:
                self.reconciler = Reconciler(
                    self.storage,
                    x402,
                    facilitator=self.paywall.facilitator,
                    owner=self.owner,
                    fulfil=self.fulfil,
                    notify=self._task_changed,
                    agent_idempotent=self.settings.server.agent_idempotent,
                )
        runner = TaskRunner(
            self.storage,
            self.agent,
            self.paywall,
            self.deadlines,
            notify=self._task_changed,
            on_unsettled=self.reconciler.wake if self.reconciler else lambda: None,
        )
        self._runner = runner
        self.queue = TaskQueue(
            self.storage,
            self.settings.server,
            runner.run,
            owner=self.owner,
            notify=self._task_changed,
            idempotent=self.settings.server.agent_idempotent,
        )
        self.queue.start()
        for service in self._services():
            self.supervisor.start(service)
        logger.info(
            "task manager started: workers={} services={} owner={}",
            self.settings.server.workers,
            self.supervisor.running,
            self.owner,
        )
        return self

    def _services(self) -> list[Service]:
        services: list[Service] = [*self._extra_services, self.outbox]
        if self.reconciler is not None:
            services.append(self.reconciler)
        return services

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Shielded: a second Ctrl-C or the server's own timeout must not cut the verdicts.
        await asyncio.shield(self._shutdown())

    async def _shutdown(self) -> None:
        await self.drain()
        if self.queue is not None:
            await self.queue.cancel_all()  # each run still in flight records how it ended
        self._stopped.set()
        await self.supervisor.stop()
        if self._runner is not None:
            await self._runner.aclose()  # stop listening for late settle answers
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.paywall is not None:
            await self.paywall.facilitator.aclose()
        # The verdicts written while draining go out now if they can (bounded); the rest
        # wait in storage for the next start or another replica.
        with contextlib.suppress(Exception):
            await self.outbox.deliver_due(OUTBOX_FLUSH_SECONDS)
        await self.outbox.close()
        await self.storage.close()
        logger.info("task manager stopped")

    # Graceful shutdown

    def begin_shutdown(self) -> None:
        """Stop taking work: message/send answers 503 from now on; runs in flight go on."""
        if self._shutdown_deadline is not None:
            return
        grace = self.settings.server.shutdown_grace_seconds
        self._shutdown_deadline = time.monotonic() + grace
        if self.queue is not None:
            self.queue.stop_taking()
        running = len(self.queue.running) if self.queue else 0
        logger.warning("shutting down: no new work; {} run(s) get {}s to finish", running, grace)

    @property
    def draining(self) -> bool:
        return self._shutdown_deadline is not None

    async def drain(self) -> None:
        """Begin shutdown (if not yet) and wait for the runs in flight, up to the grace."""
        self.begin_shutdown()
        assert self._shutdown_deadline is not None
        if self.queue is not None:
            await self.queue.drain(self._shutdown_deadline - time.monotonic())
        # Blocking message/send calls answer with what they have, so connections close.
        self._stopped.set()

    async def check_capacity(self) -> None:
        """Raise Busy unless a new task can be queued now: checked before any payment
        work, so nothing is accepted (or charged for) that cannot be run."""
        server = self.settings.server
        if self.draining:
            raise Busy("server is shutting down; retry on another replica or later", 5)
        if await self.storage.count_queued() >= server.max_queued:
            raise Busy(f"task queue is full ({server.max_queued} tasks waiting); retry later", 2)

    async def fulfil(self, task: Task) -> Task:
        """Run the agent for a paid task whose work was never delivered (fulfill policy)."""
        return await deliver(
            self.agent, task, paid=True, budget=self.settings.server.agent_timeout_seconds
        )

    @property
    def resource_url(self) -> str:
        return self.settings.server.resource_url

    def notify(self, task: Task) -> None:
        """A write about ``task`` won here (its push notification went into the outbox with
        it): wake the blocking waits when it finished."""
        self._task_changed(task)

    def _task_changed(self, task: Task) -> None:
        if task.state not in _OPEN_STATES:
            # Wake every blocking wait in this process; each re-reads its own task.
            finished, self._finished = self._finished, asyncio.Event()
            finished.set()

    async def submit(self, task_id: str) -> None:
        """The task is stored as submitted: wake a local worker for it."""
        if self.queue is not None:
            self.queue.wake()

    async def wait(self, task_id: str, timeout: float) -> None:
        """Until the task leaves submitted/working, ``timeout`` passes, or shutdown ends
        the waiting. A run here ends the wait at once; a run on another replica is seen by
        reading storage every poll interval."""
        deadline = time.monotonic() + timeout
        poll = self.settings.server.queue_poll_seconds
        while not self._stopped.is_set():
            finished = self._finished  # taken before the read, so no finish is missed
            task = await self.storage.get_task(task_id)
            if task is None or task.state not in _OPEN_STATES:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            waiters = [
                asyncio.ensure_future(finished.wait()),
                asyncio.ensure_future(self._stopped.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=min(poll, left), return_when="FIRST_COMPLETED")
            finally:
                for waiter in waiters:
                    waiter.cancel()
