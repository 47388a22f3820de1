"""Conformance of the durable task queue (storage migration 4) on memory, SQLite and
Postgres: leasing due tasks, renewing and releasing leases, compare-and-set on a task's
state, and the queue's length."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from bindu.a2a import TaskState
from bindu.errors import StorageError
from bindu.storage.base import Storage
from bindu.storage.queries import load_queries

from .conftest import T0, Backend
from .test_storage_conformance import make_task

SUBMITTED, WORKING = TaskState.SUBMITTED, TaskState.WORKING


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


async def claim(storage: Storage, now_s: float, owner: str = "a", limit: int = 10, lease=30.0):
    tasks = await storage.claim_due_tasks(
        now=at(now_s), limit=limit, owner=owner, lease_seconds=lease
    )
    return [t.id for t in tasks]


async def test_claims_submitted_tasks_oldest_first_with_limit(storage: Storage) -> None:
    for name in ("t1", "t2", "t3"):
        await storage.create_task(make_task(name))
    await storage.create_task(make_task("done", state=TaskState.COMPLETED))
    await storage.create_task(make_task("unleased-working", state=WORKING))
    assert await claim(storage, 1000, limit=2) == ["t1", "t2"]
    assert await claim(storage, 1000, owner="b") == ["t3"]  # t1, t2 are leased
    assert await claim(storage, 1000, owner="c") == []


async def test_claimed_task_comes_back_whole(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    [task] = await storage.claim_due_tasks(now=at(1000), limit=5, owner="a", lease_seconds=30)
    assert task == await storage.get_task("t1")


async def test_expired_lease_is_taken_over_live_one_is_not(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    assert await claim(storage, 1000, lease=30) == ["t1"]
    assert await claim(storage, 1029.9, owner="b") == []
    assert await claim(storage, 1030, owner="b") == ["t1"]  # expiry at exactly now is due
    # The first owner lost it: it can neither renew nor release it.
    assert not await storage.renew_task_lease("t1", owner="a", now=at(1031), lease_seconds=30)
    assert not await storage.release_task_lease("t1", owner="a")


async def test_working_task_is_due_only_once_its_lease_expired(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    [task] = await storage.claim_due_tasks(now=at(1000), limit=5, owner="a", lease_seconds=30)
    assert await storage.transition_task(
        task.with_status(WORKING), expected={SUBMITTED}, lease_owner="a"
    )
    assert await claim(storage, 1010, owner="b") == []
    # The process running it died: its lease runs out and another worker gets it.
    [again] = await storage.claim_due_tasks(now=at(1030), limit=5, owner="b", lease_seconds=30)
    assert again.id == "t1" and again.state is WORKING


async def test_renew_keeps_the_task_leased(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    assert await claim(storage, 1000, lease=30) == ["t1"]
    assert await storage.renew_task_lease("t1", owner="a", now=at(1020), lease_seconds=30)
    assert await claim(storage, 1049, owner="b") == []
    assert await claim(storage, 1050, owner="b") == ["t1"]
    assert not await storage.renew_task_lease("nope", owner="a", now=at(1), lease_seconds=1)


async def test_finished_task_is_never_due_nor_renewed(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    [task] = await storage.claim_due_tasks(now=at(1000), limit=5, owner="a", lease_seconds=30)
    assert await storage.transition_task(
        task.with_status(TaskState.COMPLETED), expected={SUBMITTED}, lease_owner="a"
    )
    assert not await storage.renew_task_lease("t1", owner="a", now=at(1001), lease_seconds=30)
    assert await claim(storage, 5000, owner="b") == []


async def test_release_hands_a_submitted_task_back_and_a_working_one_away(
    storage: Storage,
) -> None:
    await storage.create_task(make_task("queued"))
    await storage.create_task(make_task("running"))
    tasks = await storage.claim_due_tasks(now=at(1000), limit=5, owner="a", lease_seconds=30)
    running = next(t for t in tasks if t.id == "running")
    assert await storage.transition_task(
        running.with_status(WORKING), expected={SUBMITTED}, lease_owner="a"
    )
    assert await storage.release_task_lease("queued", owner="a")
    assert await storage.release_task_lease("running", owner="a")
    assert not await storage.release_task_lease("running", owner="a")  # nothing left to drop
    # The submitted one is due again at once; the working one belongs to nobody's queue.
    assert await claim(storage, 1001, owner="b") == ["queued"]
    assert await claim(storage, 9999, owner="c") == ["queued"]


async def test_transition_task_is_compare_and_set(storage: Storage) -> None:
    task = make_task("t1")
    await storage.create_task(task)
    canceled = task.with_status(TaskState.CANCELED)
    assert not await storage.transition_task(canceled, expected={WORKING})
    assert (await storage.get_task("t1")).state is SUBMITTED
    assert await storage.transition_task(canceled, expected={SUBMITTED})
    # The worker that took it a moment before loses: the cancel stands.
    assert not await storage.transition_task(task.with_status(WORKING), expected={SUBMITTED})
    assert (await storage.get_task("t1")).state is TaskState.CANCELED
    assert not await storage.transition_task(make_task("missing"), expected={SUBMITTED})


async def test_transition_task_checks_the_lease_owner(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    task = make_task("t1").with_status(WORKING)
    assert not await storage.transition_task(task, expected={SUBMITTED}, lease_owner="a")
    assert await claim(storage, 1000, owner="a") == ["t1"]
    assert not await storage.transition_task(task, expected={SUBMITTED}, lease_owner="b")
    assert await storage.transition_task(task, expected={SUBMITTED}, lease_owner="a")


async def test_saving_a_task_keeps_its_lease(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    [task] = await storage.claim_due_tasks(now=at(1000), limit=5, owner="a", lease_seconds=30)
    await storage.save_task(task.with_status(WORKING))
    assert await storage.renew_task_lease("t1", owner="a", now=at(1001), lease_seconds=30)
    assert await claim(storage, 1010, owner="b") == []


async def test_count_queued_counts_submitted_tasks(storage: Storage) -> None:
    assert await storage.count_queued() == 0
    await storage.create_task(make_task("t1"))
    await storage.create_task(make_task("t2"))
    await storage.create_task(make_task("t3", state=WORKING))
    await storage.create_task(make_task("t4", state=TaskState.FAILED))
    assert await storage.count_queued() == 2
    await storage.transition_task(make_task("t1", state=WORKING), expected={SUBMITTED})
    assert await storage.count_queued() == 1


async def test_leases_survive_reopen(backend: Backend) -> None:
    first = await backend.handle()
    await first.create_task(make_task("t1"))
    assert await claim(first, 1000, owner="a") == ["t1"]
    await first.close()
    second = await backend.handle()
    assert await claim(second, 1010, owner="b") == []
    assert await claim(second, 1030, owner="b") == ["t1"]


async def test_concurrent_claimers_never_share_a_task(backend: Backend) -> None:
    handles = [await backend.handle() for _ in range(3)]
    for i in range(30):
        await handles[0].create_task(make_task(f"t{i:02d}"))

    async def drain(storage: Storage, owner: str) -> list[str]:
        taken: list[str] = []
        while batch := await claim(storage, 1000, owner=owner, limit=4):
            taken += batch
        return taken

    results = await asyncio.gather(*(drain(h, f"o{i}") for i, h in enumerate(handles)))
    every = [task_id for taken in results for task_id in taken]
    assert sorted(every) == [f"t{i:02d}" for i in range(30)]  # each exactly once


async def test_claim_refuses_a_negative_limit(storage: Storage) -> None:
    await storage.create_task(make_task("t1"))
    with pytest.raises(StorageError):
        await storage.claim_due_tasks(now=at(0), limit=-1, owner="a", lease_seconds=1)
    assert await claim(storage, 1000) == ["t1"]  # nothing was leased


async def test_claim_due_tasks_uses_the_queue_index(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    for n in range(5):
        await storage.create_task(make_task(f"t{n}"))
    if sql_backend.name == "sqlite":
        query = load_queries("sqlite")["claim_due_tasks"]
        params = {"now": "x", "limit": 5, "owner": "w", "lease_expires_at": "y"}
        plan = "\n".join(
            str(row[-1]) for row in await sql_backend.execute(f"EXPLAIN QUERY PLAN {query}", params)
        )
        assert "USING INDEX tasks_queue" in plan, plan
    else:
        query = load_queries("postgres")["claim_due_tasks"]
        params = {"now": at(10), "limit": 5, "owner": "w", "lease_expires_at": at(20)}
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in await sql_backend.execute(
                f"EXPLAIN {query}", params, session=["SET enable_seqscan = off"]
            )
        )
        assert "tasks_queue" in plan, plan
        assert "Seq Scan on tasks" not in plan, plan
