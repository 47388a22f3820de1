"""uvicorn with a graceful shutdown that drains the task queue first.

uvicorn's own shutdown closes the listening socket and every idle connection at once, and
only runs the app's lifespan end after open requests finish. So on the first SIGTERM (or
SIGINT) this server instead tells the TaskManager to stop taking work: ``message/send``
and ``/health`` answer 503 with ``Retry-After`` (a load balancer moves traffic elsewhere)
while the runs in flight get ``SERVER__SHUTDOWN_GRACE_SECONDS`` to finish. Then uvicorn
shuts down as usual, and the lifespan's end cancels what is left, each run recording how
it ended (an orphan verdict and its alert for paid work that was not delivered). A second
signal cuts the wait short (the verdicts are still written).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import FrameType

import uvicorn
from loguru import logger

from bindu.server.task_manager import TaskManager

# After the drain, how long uvicorn waits for open requests before cancelling them (s):
# blocking message/send calls answer at once once the drain ends, so this is a backstop.
REQUESTS_GRACE_SECONDS = 10


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, manager: Callable[[], TaskManager | None]) -> None:
        super().__init__(config)
        self._manager = manager
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        manager = self._manager()
        if self._drain_requested or manager is None or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        self._captured_signals.append(sig)  # uvicorn re-raises it once the server is down
        # A Python signal handler runs between bytecodes of the loop's thread: hand over.
        self._loop.call_soon_threadsafe(self._start_drain, manager)

    def _start_drain(self, manager: TaskManager) -> None:
        self._drain = asyncio.create_task(self._drain_then_exit(manager), name="drain")

    async def _drain_then_exit(self, manager: TaskManager) -> None:
        try:
            await manager.drain()
        except Exception:
            logger.exception("draining the task queue failed; shutting down now")
        finally:
            self.should_exit = True


def run_server(
    app: object, host: str, port: int, manager: Callable[[], TaskManager | None]
) -> None:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=REQUESTS_GRACE_SECONDS,
        # Client addresses come from the socket; X402__RATE_LIMIT__TRUSTED_PROXIES decides
        # whose X-Forwarded-For is believed (bindu/server/client_address.py).
        proxy_headers=False,
    )
    DrainingServer(config, manager).run()
