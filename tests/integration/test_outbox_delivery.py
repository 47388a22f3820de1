"""The outbox service against real HTTP receivers on loopback and a real SQLite file:
order per task, retries, 4xx and redirects final, one dead receiver delaying no one,
the Host header kept while connecting to the checked address."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.payments.events import OutboxStatus, task_notice
from bindu.server.embedded import bind
from bindu.server.outbox import OutboxService
from bindu.settings import OutboxSettings, PushSettings
from bindu.signing import PushSigner
from bindu.storage.base import Storage
from bindu.storage.sqlite import SqliteStorage
from tests.support.receivers import Receiver, receiving
from tests.support.waiting import until

FAST = OutboxSettings(
    poll_seconds=0.05, first_retry_seconds=0.1, max_retry_seconds=0.4, max_attempts=50
)


@asynccontextmanager
async def outbox(
    tmp_path: Path,
    *,
    settings: OutboxSettings = FAST,
    allowed: tuple[str, ...] = ("127.0.0.1",),
    timeout: float = 10.0,
) -> AsyncIterator[tuple[Storage, OutboxService]]:
    storage = SqliteStorage(str(tmp_path / "outbox.db"))
    await storage.open()
    push = PushSettings(allowed_hosts=list(allowed), timeout_seconds=timeout)
    signer = PushSigner.from_settings(None, issuer="http://bindu.test/")
    service = OutboxService(storage, settings, push, signer, webhook_url=None)
    storage.watch_events(service.wake)
    running = asyncio.create_task(service.run())
    try:
        yield storage, service
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await service.close()
        await storage.close()


async def walk(storage: Storage, task_id: str, url: str, *states: TaskState) -> None:
    """A task through ``states``, each write carrying its notice, as the runner does."""
    task = Task(id=task_id, status=TaskStatus(state=TaskState.SUBMITTED))
    await storage.set_push_config(task_id, {"url": url, "token": f"tok-{task_id}"})
    await storage.create_task(task)
    for state in states:
        task = task.with_status(state)
        await storage.save_task(task, events=[task_notice(task)])


def states_of(receiver: Receiver, task_id: str) -> list[str]:
    return [b["status"]["state"] for b in receiver.bodies() if b["id"] == task_id]


async def test_each_task_in_order_once_despite_failures(tmp_path: Path) -> None:
    receiver = Receiver(script=[503, 500, 503])
    async with receiving(receiver) as url, outbox(tmp_path) as (storage, _):
        for n in range(4):
            await walk(storage, f"t{n}", url + f"/t{n}", TaskState.WORKING, TaskState.COMPLETED)

        async def all_arrived() -> bool:
            return all(len(states_of(receiver, f"t{n}")) >= 2 for n in range(4))

        await until(all_arrived, timeout=30, what="every notification")

        async def all_recorded() -> bool:
            # The receiver answers before the service records the delivery.
            return not await storage.list_outbox(status=OutboxStatus.PENDING)

        await until(all_recorded, timeout=10, what="every delivery recorded")
    for n in range(4):
        assert states_of(receiver, f"t{n}") == ["working", "completed"]
    assert all(
        c.headers["x-a2a-notification-token"] == f"tok-{c.body['id']}" for c in receiver.calls
    )
    assert all(c.body["history"] == [] for c in receiver.calls)


async def test_a_4xx_answer_is_final_and_a_redirect_is_not_followed(tmp_path: Path) -> None:
    refusing, redirecting, elsewhere = Receiver(status=400), Receiver(status=307), Receiver()
    async with (
        receiving(refusing) as refusing_url,
        receiving(elsewhere) as elsewhere_url,
        receiving(redirecting) as redirecting_url,
        outbox(tmp_path) as (storage, _),
    ):
        redirecting.redirect_to = elsewhere_url + "/stolen"
        await walk(storage, "refused", refusing_url + "/hook", TaskState.WORKING)
        await walk(storage, "moved", redirecting_url + "/hook", TaskState.WORKING)

        async def both_dropped() -> bool:
            dropped = await storage.list_outbox(status=OutboxStatus.DROPPED)
            return len(dropped) == 2

        await until(both_dropped, timeout=20, what="both events dropped")
        dropped = {i.task_id: i for i in await storage.list_outbox()}
    assert len(refusing.calls) == 1 and len(redirecting.calls) == 1
    assert elsewhere.calls == []
    assert dropped["refused"].attempts == 1 and "HTTP 400" in (dropped["refused"].error or "")
    assert "redirects are not followed" in (dropped["moved"].error or "")


async def test_a_hanging_receiver_delays_no_other_destination(tmp_path: Path) -> None:
    # Accepts connections (the kernel's backlog) but never answers a request.
    hanging = bind()
    hanging.listen(16)
    live = Receiver()
    try:
        async with receiving(live) as url, outbox(tmp_path, timeout=30) as (storage, _):
            dead_url = f"http://127.0.0.1:{hanging.getsockname()[1]}/hook"
            await walk(storage, "stuck", dead_url, TaskState.WORKING, TaskState.COMPLETED)
            await walk(storage, "fine", url + "/hook", TaskState.WORKING, TaskState.COMPLETED)

            async def fine_arrived() -> bool:
                return states_of(live, "fine") == ["working", "completed"]

            await until(fine_arrived, timeout=20, what="the live receiver's notifications")
            stuck = await storage.list_outbox(task_id="stuck")
        # Still the first attempt on the hanging receiver, the second event behind it.
        assert [(i.status, i.attempts) for i in stuck] == [(OutboxStatus.PENDING, 0)] * 2
        assert stuck[0].lease_owner is not None and stuck[1].lease_owner is None
    finally:
        hanging.close()


async def test_connects_to_the_checked_address_with_the_callers_host(tmp_path: Path) -> None:
    receiver = Receiver()
    async with (
        receiving(receiver) as url,
        outbox(tmp_path, allowed=("localhost",)) as (storage, _),
    ):
        port = url.rsplit(":", 1)[1]
        await walk(storage, "t1", f"http://localhost:{port}/hook", TaskState.WORKING)
        await until(lambda: _arrived(receiver), timeout=20, what="the notification")
    [call] = receiver.calls
    assert call.headers["host"] == f"localhost:{port}"


async def test_a_refused_address_is_never_contacted(tmp_path: Path) -> None:
    # 127.0.0.1 is not allowed here: the event is dropped without a connection.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    try:
        async with outbox(tmp_path, allowed=()) as (storage, _):
            url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
            await walk(storage, "t1", url, TaskState.WORKING)

            async def dropped() -> bool:
                [item] = await storage.list_outbox()
                return item.status is OutboxStatus.DROPPED

            await until(dropped, timeout=20, what="the refused event dropped")
            [item] = await storage.list_outbox()
        assert "loopback" in (item.error or "")
        try:
            listener.accept()
            contacted = True
        except BlockingIOError:
            contacted = False
        assert not contacted
    finally:
        listener.close()


async def _arrived(receiver: Receiver) -> bool:
    return bool(receiver.calls)
