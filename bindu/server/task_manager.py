"""TaskManager: the async context manager that owns storage, the scheduler (an asyncio
queue), the workers that run the agent, the paywall, and the background services."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from types import TracebackType

from loguru import logger

from bindu.a2a import Task
from bindu.agent import Agent
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.paywall import Paywall
from bindu.reconcile.service import Reconciler
from bindu.server.push import PushNotifier
from bindu.server.runner import TaskRunner, deliver
from bindu.server.services import Service, Supervisor
from bindu.settings import Settings
from bindu.storage.base import Storage
from bindu.storage.factory import create_storage

# How long shutdown lets running tasks finish before cancelling them (seconds).
SHUTDOWN_GRACE_SECONDS = 5.0


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
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._done: dict[str, asyncio.Event] = {}
        self._workers: list[asyncio.Task[None]] = []
        self.supervisor = Supervisor()
        self.reconciler: Reconciler | None = None
        self.push: PushNotifier | None = None

    @property
    def stale_after(self) -> timedelta:
        x402 = self.settings.x402
        return timedelta(
            seconds=x402.settle_timeout_seconds + x402.reconciliation.stale_margin_seconds
        )

    async def __aenter__(self) -> TaskManager:
        await self.storage.open()
        self.push = PushNotifier(self.storage)
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
                    fulfil=self.fulfil,
                    notify=self.notify,
                )
        runner = TaskRunner(
            self.storage,
            self.agent,
            self.paywall,
            self.stale_after,
            notify=self.notify,
            on_unsettled=self.reconciler.wake if self.reconciler else lambda: None,
        )
        self._workers = [
            asyncio.create_task(self._work(runner), name=f"worker:{i}")
            for i in range(self.settings.server.workers)
        ]
        for service in self._services():
            self.supervisor.start(service)
        logger.info(
            "task manager started: workers={} services={}",
            len(self._workers),
            self.supervisor.running,
        )
        return self

    def _services(self) -> list[Service]:
        services: list[Service] = list(self._extra_services)
        if self.reconciler is not None:
            services.append(self.reconciler)
        return services

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.supervisor.stop()
        if self._queue.qsize() == 0 and self._busy():
            # Let tasks in flight finish (a cancelled settle is safe, but finishing is kinder).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain(), SHUTDOWN_GRACE_SECONDS)
        for worker in self._workers:
            worker.cancel()
        for worker in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.paywall is not None:
            await self.paywall.facilitator.aclose()
        if self.push is not None:
            await self.push.aclose()
        await self.storage.close()
        logger.info("task manager stopped")

    def notify(self, task: Task) -> None:
        """Tell the task's push receiver (if any) about its new state; never blocks."""
        if self.push is not None:
            self.push.notify(task)

    async def fulfil(self, task: Task) -> Task:
        """Run the agent for a paid task whose work was never delivered (fulfill policy)."""
        return await deliver(self.agent, task, paid=True)

    @property
    def resource_url(self) -> str:
        server = self.settings.server
        return (server.url or f"http://{server.host}:{server.port}").rstrip("/") + "/"

    def _busy(self) -> bool:
        return any(not event.is_set() for event in self._done.values())

    async def _drain(self) -> None:
        for event in list(self._done.values()):
            await event.wait()

    async def submit(self, task_id: str) -> None:
        self._done.setdefault(task_id, asyncio.Event())
        self._queued.add(task_id)
        await self._queue.put(task_id)

    def withdraw(self, task_id: str) -> bool:
        """Take a task that no worker has started out of the queue (for tasks/cancel)."""
        if task_id not in self._queued:
            return False
        self._queued.discard(task_id)
        self._finish(task_id)
        return True

    async def wait(self, task_id: str, timeout: float) -> None:
        event = self._done.get(task_id)
        if event is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def _finish(self, task_id: str) -> None:
        event = self._done.pop(task_id, None)
        if event is not None:
            event.set()

    async def _work(self, runner: TaskRunner) -> None:
        while True:
            task_id = await self._queue.get()
            if task_id not in self._queued:
                continue  # withdrawn by tasks/cancel
            self._queued.discard(task_id)
            try:
                await runner.run(task_id)
            except Exception:
                # Storage trouble mid-task: the records say what happened; keep serving.
                logger.exception("task {} crashed in the worker", task_id)
            finally:
                self._finish(task_id)
