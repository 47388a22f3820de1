"""A2A push notifications: task updates POSTed to the client's URL with its token.

Delivery never blocks the worker or the reconciler: ``notify`` only schedules it. Each
task's notifications go out in order (one lock per task) and are retried with backoff
while the receiver is down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx
from loguru import logger

from bindu.a2a import PushNotificationConfig, Task
from bindu.metrics import PUSH_DELIVERIES
from bindu.storage.base import Storage

TaskListener = Callable[[Task], None]

# Delivery attempts per notification and the first retry delay, doubled each time (s).
PUSH_ATTEMPTS = 10
PUSH_FIRST_DELAY_SECONDS = 0.5
PUSH_MAX_DELAY_SECONDS = 30.0
PUSH_TIMEOUT_SECONDS = 10.0
TOKEN_HEADER = "X-A2A-Notification-Token"


class PushNotifier:
    def __init__(
        self,
        storage: Storage,
        *,
        attempts: int = PUSH_ATTEMPTS,
        first_delay: float = PUSH_FIRST_DELAY_SECONDS,
    ) -> None:
        self._storage = storage
        self._attempts = attempts
        self._first_delay = first_delay
        self._http = httpx.AsyncClient(timeout=PUSH_TIMEOUT_SECONDS)
        # One lock per task keeps its notifications in order; dropped when none are queued.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._pending: set[asyncio.Task[None]] = set()

    def notify(self, task: Task) -> None:
        snapshot = task.model_copy(update={"history": []}).wire()
        lock, queued = self._locks.get(task.id, (asyncio.Lock(), 0))
        self._locks[task.id] = (lock, queued + 1)
        job = asyncio.create_task(self._deliver(task.id, snapshot, lock))
        self._pending.add(job)
        job.add_done_callback(lambda done: self._done(task.id, done))

    def _done(self, task_id: str, job: asyncio.Task[None]) -> None:
        self._pending.discard(job)
        lock, queued = self._locks[task_id]
        if queued <= 1:
            del self._locks[task_id]
        else:
            self._locks[task_id] = (lock, queued - 1)

    async def _deliver(self, task_id: str, body: dict[str, Any], lock: asyncio.Lock) -> None:
        async with lock:
            raw = await self._storage.get_push_config(task_id)
            if raw is None:
                return
            config = PushNotificationConfig.model_validate(raw)
            headers = {}
            if config.token:
                headers[TOKEN_HEADER] = config.token
            auth = config.authentication
            if auth and auth.credentials and "bearer" in {s.lower() for s in auth.schemes}:
                headers["Authorization"] = f"Bearer {auth.credentials}"
            delay = self._first_delay
            for attempt in range(1, self._attempts + 1):
                try:
                    reply = await self._http.post(str(config.url), json=body, headers=headers)
                    if reply.status_code < 300:
                        PUSH_DELIVERIES.labels("delivered").inc()
                        return
                    problem = f"HTTP {reply.status_code}"
                except httpx.HTTPError as exc:
                    problem = type(exc).__name__
                logger.debug("push for task {} attempt {} failed: {}", task_id, attempt, problem)
                if attempt < self._attempts:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, PUSH_MAX_DELAY_SECONDS)
            PUSH_DELIVERIES.labels("abandoned").inc()
            logger.warning("push for task {} abandoned after {} attempts", task_id, self._attempts)

    async def aclose(self, grace: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=grace)
        for job in list(self._pending):
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await self._http.aclose()
