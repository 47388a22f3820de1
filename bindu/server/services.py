"""Background services supervised by the TaskManager: a crash is logged and restarted."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from loguru import logger

from bindu.metrics import SERVICE_RESTARTS

# Restart delay after a crash, doubling up to the cap (seconds).
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_CAP_SECONDS = 30.0


class Service(Protocol):
    name: str

    async def run(self) -> None:
        """Run until cancelled."""


class Supervisor:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, service: Service) -> None:
        self._tasks[service.name] = asyncio.create_task(
            self._keep_running(service), name=f"service:{service.name}"
        )

    async def _keep_running(self, service: Service) -> None:
        delay = RESTART_DELAY_SECONDS
        while True:
            try:
                await service.run()
                logger.warning("service {} returned; restarting", service.name)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("service {} crashed; restarting in {}s", service.name, delay)
            SERVICE_RESTARTS.labels(service.name).inc()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_CAP_SECONDS)

    @property
    def running(self) -> list[str]:
        return [name for name, task in self._tasks.items() if not task.done()]

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
