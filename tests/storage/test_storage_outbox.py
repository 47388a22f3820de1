"""The outbox (migration 5) on every backend: events kept with the write that won, once
per key, claimed head-of-stream first with a lease, finished, retried and deferred."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bindu.a2a import TaskState
from bindu.errors import StorageError
from bindu.payments.events import OutboxEvent, OutboxStatus, payment_alert, task_notice
from bindu.payments.records import PaymentStatus, PaymentUpdate
from bindu.storage.base import Storage

from .conftest import Backend
from .test_storage_conformance import at, make_record, make_task

S = PaymentStatus
PENDING, DELIVERED, DROPPED = OutboxStatus.PENDING, OutboxStatus.DELIVERED, OutboxStatus.DROPPED


def webhook(key: str, task_id: str = "t1") -> OutboxEvent:
    return OutboxEvent("webhook", key, task_id, {"event": key})


async def keys(storage: Storage, **filters: object) -> list[str]:
    return [i.key for i in await storage.list_outbox(**filters)]  # type: ignore[arg-type]


async def claim(storage: Storage, owner: str = "a", now: float = 100, limit: int = 10):
    return await storage.claim_outbox(now=at(now), limit=limit, owner=owner, lease_seconds=30)


async def test_task_writes_keep_their_events_once_per_key(storage: Storage) -> None:
    task = make_task("t1")
    await storage.set_push_config("t1", {"url": "https://client.example/hook"})
    await storage.create_task(task, events=[task_notice(task)])
    working = task.with_status(TaskState.WORKING)
    await storage.save_task(working, events=[task_notice(working)])
    await storage.save_task(working, events=[task_notice(working), webhook("w1")])
    items = await storage.list_outbox()
    assert [i.key for i in items] == [
        "push:t1:submitted:-",
        "push:t1:working:-",
        "w1",
    ]
    assert [i.seq for i in items] == sorted(i.seq for i in items)
    first = items[1]
    assert first.status is PENDING and first.attempts == 0 and first.stream == "push:t1"
    assert first.body == task_notice(working).body and first.body["history"] == []
    assert first.kind == "push" and first.task_id == "t1"
    assert first.created_at == first.next_attempt_at and first.lease_owner is None


async def test_push_events_need_a_push_config_webhooks_do_not(storage: Storage) -> None:
    task = make_task("t1")
    await storage.create_task(task, events=[task_notice(task), webhook("w1")])
    assert await keys(storage) == ["w1"]


async def test_a_write_that_fails_keeps_no_event(storage: Storage) -> None:
    await storage.set_push_config("t1", {"url": "https://x"})
    await storage.create_task(make_task("t1"))
    with pytest.raises(StorageError):
        await storage.create_task(make_task("t1"), events=[webhook("dup-create")])
    with pytest.raises(StorageError):
        await storage.save_task(make_task("missing"), events=[webhook("save-missing")])
    assert await keys(storage) == []


async def test_transition_keeps_events_only_when_it_won(storage: Storage) -> None:
    record = make_record("p1", task_id="t1")
    await storage.claim_payment(record)
    await storage.set_push_config("t1", {"url": "https://x"})
    task = make_task("t1")
    won = await storage.transition_payment(
        "p1",
        {S.CLAIMED},
        PaymentUpdate(status=S.VERIFIED),
        now=at(1),
        task=task,
        events=[task_notice(task), payment_alert(record, "orphaned", "why", None)],
    )
    assert won is not None
    lost = await storage.transition_payment(
        "p1",
        {S.CLAIMED},
        PaymentUpdate(status=S.VERIFIED),
        now=at(2),
        events=[webhook("lost")],
    )
    assert lost is None
    assert await keys(storage) == ["push:t1:submitted:-", "webhook:p1:orphaned"]


async def test_claim_takes_only_the_head_of_each_stream(storage: Storage) -> None:
    await storage.create_task(make_task("t1"), events=[webhook("a1", "t1"), webhook("a2", "t1")])
    await storage.create_task(make_task("t2"), events=[webhook("b1", "t2")])
    heads = await claim(storage, "a")
    assert [i.key for i in heads] == ["a1", "b1"]
    assert all(i.lease_owner == "a" for i in heads)
    assert await claim(storage, "b") == []  # heads leased; a2 waits behind a1
    assert await storage.finish_outbox(
        heads[0].seq, owner="a", now=at(101), status=DELIVERED, error=None
    )
    [nxt] = await claim(storage, "b")
    assert nxt.key == "a2"
    [done] = await storage.list_outbox(status=DELIVERED)
    assert (done.key, done.attempts, done.finished_at, done.lease_owner) == ("a1", 1, at(101), None)


async def test_retry_holds_the_stream_back_but_not_others(storage: Storage) -> None:
    await storage.create_task(make_task("t1"), events=[webhook("a1", "t1"), webhook("a2", "t1")])
    await storage.create_task(make_task("t2"), events=[webhook("b1", "t2")])
    a1, b1 = await claim(storage)
    assert await storage.retry_outbox(a1.seq, owner="a", next_attempt_at=at(160), error="HTTP 503")
    assert await storage.retry_outbox(
        b1.seq, owner="a", next_attempt_at=at(120), error="deferred", attempted=False
    )
    assert await claim(storage, now=110) == []
    assert [i.key for i in await claim(storage, now=120)] == ["b1"]
    # (b1's lease from 120 has lapsed by 160 too: it comes back beside a1.)
    again = {i.key: i for i in await claim(storage, now=160)}["a1"]
    assert (again.key, again.attempts, again.error) == ("a1", 1, "HTTP 503")
    [b] = await storage.list_outbox(task_id="t2")
    assert b.attempts == 0  # a deferral is not an attempt


async def test_lease_expiry_hands_an_event_over(storage: Storage) -> None:
    await storage.create_task(make_task("t1"), events=[webhook("a1")])
    [mine] = await claim(storage, "a", now=100)
    assert await claim(storage, "b", now=129) == []
    [theirs] = await claim(storage, "b", now=131)
    assert theirs.seq == mine.seq and theirs.lease_owner == "b"
    # The first owner's late answer no longer counts.
    assert not await storage.finish_outbox(
        mine.seq, owner="a", now=at(132), status=DELIVERED, error=None
    )
    assert not await storage.retry_outbox(mine.seq, owner="a", next_attempt_at=at(200), error="x")
    assert await storage.finish_outbox(
        mine.seq, owner="b", now=at(133), status=DROPPED, error="HTTP 410"
    )
    [item] = await storage.list_outbox()
    assert (item.status, item.error) == (DROPPED, "HTTP 410")
    assert await claim(storage, "c", now=500) == []


async def test_finish_needs_a_final_status(storage: Storage) -> None:
    await storage.create_task(make_task("t1"), events=[webhook("a1")])
    [item] = await claim(storage)
    with pytest.raises(StorageError):
        await storage.finish_outbox(item.seq, owner="a", now=at(1), status=PENDING, error=None)


async def test_claim_limit_and_due_order(storage: Storage, backend: Backend) -> None:
    for n in range(5):
        await storage.create_task(make_task(f"t{n}"), events=[webhook(f"e{n}", f"t{n}")])
    first = await claim(storage, limit=2)
    assert [i.key for i in first] == ["e0", "e1"]
    rest = await claim(storage, "b", limit=10)
    assert [i.key for i in rest] == ["e2", "e3", "e4"]
    assert await claim(storage, "c", now=0) == []  # nothing is due before it was written


async def test_concurrent_claims_never_share_an_event(backend: Backend) -> None:
    first, second = await backend.handle(), await backend.handle()
    for n in range(30):
        await first.create_task(make_task(f"t{n}"), events=[webhook(f"e{n}", f"t{n}")])
    got = await asyncio.gather(
        *(claim(s, f"o{i}", limit=4) for i in range(6) for s in (first, second))
    )
    seqs = [item.seq for batch in got for item in batch]
    assert len(seqs) == len(set(seqs)) == 30


async def test_outbox_survives_reopen(backend: Backend) -> None:
    first = await backend.handle()
    await first.create_task(make_task("t1"), events=[webhook("a1")])
    await first.close()
    second = await backend.handle()
    [item] = await claim(second)
    assert item.key == "a1" and item.body == {"event": "a1"}


async def test_events_are_checked_before_anything_is_written(storage: Storage) -> None:
    bad = OutboxEvent("webhook", "k", "t1", {"x": float("nan")})
    with pytest.raises(StorageError):
        await storage.create_task(make_task("t1"), events=[bad])
    assert await storage.get_task("t1") is None
    with pytest.raises(StorageError):
        await storage.create_task(make_task("t1"), events=[OutboxEvent("push", "k", None, {})])
    assert await keys(storage) == []


async def test_list_outbox_filters(storage: Storage) -> None:
    await storage.create_task(make_task("t1"), events=[webhook("a1", "t1"), webhook("a2", "t1")])
    await storage.create_task(make_task("t2"), events=[webhook("b1", "t2")])
    assert await keys(storage, task_id="t1") == ["a1", "a2"]
    assert await keys(storage, limit=1, offset=1) == ["a2"]
    assert await keys(storage, status=DELIVERED) == []
    later = at(100) + timedelta(seconds=1)
    [a1, _] = await claim(storage)
    await storage.finish_outbox(a1.seq, owner="a", now=later, status=DELIVERED, error=None)
    assert await keys(storage, status=PENDING) == ["a2", "b1"]


async def test_task_compare_and_set_keeps_events_only_when_it_won(storage: Storage) -> None:
    await storage.set_push_config("t1", {"url": "https://x"})
    task = make_task("t1")
    await storage.create_task(task)
    working = task.with_status(TaskState.WORKING)
    assert await storage.transition_task(
        working, expected={TaskState.SUBMITTED}, events=[task_notice(working)]
    )
    canceled = task.with_status(TaskState.CANCELED)
    assert not await storage.transition_task(
        canceled, expected={TaskState.SUBMITTED}, events=[task_notice(canceled)]
    )
    assert await keys(storage) == ["push:t1:working:-"]
