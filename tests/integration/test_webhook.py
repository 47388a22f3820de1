"""The operator webhook, delivered from the outbox: retried while the receiver is down or
erroring, then it arrives once; void is not posted; a receiver that never answers is given
up and counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.metrics import WEBHOOK_FAILURES
from bindu.payments.events import OutboxStatus, alert_events
from bindu.payments.records import PaymentStatus
from bindu.server.embedded import bind, serving
from bindu.server.outbox import OutboxService
from bindu.settings import OutboxSettings, PushSettings
from bindu.signing import PushSigner
from bindu.storage.base import Storage
from bindu.storage.sqlite import SqliteStorage
from tests.storage.test_storage_conformance import make_record
from tests.support.receivers import Receiver, receiving
from tests.support.waiting import until

FAST = OutboxSettings(poll_seconds=0.05, first_retry_seconds=0.1, max_retry_seconds=0.5)


@asynccontextmanager
async def webhook_outbox(
    tmp_path: Path, url: str, settings: OutboxSettings = FAST
) -> AsyncIterator[Storage]:
    storage = SqliteStorage(str(tmp_path / "alerts.db"))
    await storage.open()
    signer = PushSigner.from_settings(None, issuer="http://bindu.test/")
    service = OutboxService(storage, settings, PushSettings(), signer, webhook_url=url)
    storage.watch_events(service.wake)
    running = asyncio.create_task(service.run())
    try:
        yield storage
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await service.close()
        await storage.close()


async def judge(storage: Storage, payment_id: str, verdict: str) -> list[dict]:
    """A verdict written with its alerts, as the reconciler writes it."""
    record = make_record(payment_id, status=PaymentStatus.ORPHANED, settle_tx="0xab")
    events = alert_events(record, verdict, "work not delivered", None, 3)
    task = Task(id=record.task_id, status=TaskStatus(state=TaskState.FAILED))
    await storage.create_task(task, events=events)
    return [e.body for e in events]


async def test_webhook_survives_a_receiver_that_is_down_then_erroring(tmp_path: Path) -> None:
    receiver = Receiver(script=[503, 503])
    sock = bind()  # reserved but not listening yet: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    async with webhook_outbox(tmp_path, url) as storage:
        [sent] = await judge(storage, "p1", "orphaned")

        async def refused_once() -> bool:
            [item] = await storage.list_outbox()
            return item.attempts >= 1

        await until(refused_once, timeout=10, what="a refused attempt")
        async with serving(receiver.app(), sock, lifespan="off"):
            await until(lambda: _accepted(receiver), timeout=30, what="webhook delivery")
        [item] = await storage.list_outbox()
    assert receiver.bodies() == [sent]
    assert sent["event"] == "payment.orphaned" and sent["transaction"] == "0xab"
    assert item.status is OutboxStatus.DELIVERED and item.attempts >= 4


async def test_void_is_not_posted_unresolved_is(tmp_path: Path) -> None:
    receiver = Receiver()
    async with receiving(receiver) as base, webhook_outbox(tmp_path, base + "/hook") as storage:
        assert await judge(storage, "p1", "void") == []
        await judge(storage, "p2", "unresolved")
        await until(lambda: _accepted(receiver), timeout=10, what="unresolved delivery")
    assert [e["event"] for e in receiver.bodies()] == ["payment.unresolved"]


async def test_a_receiver_that_never_answers_is_given_up_and_counted(tmp_path: Path) -> None:
    sock = bind()  # never served
    failures = WEBHOOK_FAILURES._value.get()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    settings = OutboxSettings(poll_seconds=0.05, first_retry_seconds=0.01, max_attempts=3)
    async with webhook_outbox(tmp_path, url, settings) as storage:
        await judge(storage, "p1", "orphaned")

        async def gave_up() -> bool:
            return WEBHOOK_FAILURES._value.get() == failures + 1

        await until(gave_up, timeout=10, what="the webhook to give up")
        [item] = await storage.list_outbox()
    sock.close()
    assert (item.status, item.attempts) == (OutboxStatus.DROPPED, 3)
    assert "gave up after 3 attempts" in (item.error or "")


async def _accepted(receiver: Receiver) -> bool:
    return bool(receiver.accepted)
