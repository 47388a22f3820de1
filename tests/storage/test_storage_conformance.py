"""The storage conformance suite: every test runs against memory, SQLite and Postgres,
so the three backends are held to one set of semantics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.errors import IllegalTransition, RefundTxTaken, StorageError
from bindu.payments.records import (
    FINAL_STATUSES,
    OPEN_STATUSES,
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
    Receipt,
    Refund,
    StatusStats,
)
from bindu.storage.base import Storage

from .conftest import T0, Backend

S = PaymentStatus
OPEN = [S.VERIFIED, S.FAILED]  # a status filter in listings


def make_task(task_id: str, *, context_id: str = "ctx", state: TaskState = TaskState.SUBMITTED):
    return Task(
        id=task_id,
        context_id=context_id,
        status=TaskStatus(state=state, timestamp=T0),
        metadata={"k": "v"},
    )


def make_record(payment_id: str, **changes: Any) -> PaymentRecord:
    base = PaymentRecord(
        id=payment_id,
        task_id=f"task-{payment_id}",
        status=S.CLAIMED,
        network="eip155:84532",
        asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",
        pay_to="0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        payer="0xAbCdEf0000000000000000000000000000000001",
        amount="10000",
        nonce="0x" + payment_id.encode().hex().rjust(64, "0"),
        valid_after=1_700_000_000,
        valid_before=1_700_000_600,
        payload={"x402Version": 2, "payload": {"signature": "0xsig"}},
        requirements={"scheme": "exact", "maxAmountRequired": "10000"},
        created_at=T0,
        updated_at=T0,
    )
    return base.evolve(**changes)


def due_record(payment_id: str, next_check_at: datetime, **changes: Any) -> PaymentRecord:
    return make_record(payment_id, **{"status": S.SETTLING, **changes}, next_check_at=next_check_at)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_refund(**changes: Any) -> Refund:
    base = Refund(
        transaction="0x" + "ee" * 32,
        amount="10000",
        recorded_at=at(50),
        block_number=12,
        checked_on_chain=True,
        note="refunded by hand",
    )
    return Refund(**{**base.__dict__, **changes})


# Tasks


async def test_create_and_get_task(storage: Storage) -> None:
    task = make_task("t1")
    await storage.create_task(task)
    assert await storage.get_task("t1") == task
    assert await storage.get_task("missing") is None


async def test_create_duplicate_task_raises_and_keeps_original(storage: Storage) -> None:
    await storage.create_task(make_task("t1", context_id="first"))
    with pytest.raises(StorageError):
        await storage.create_task(make_task("t1", context_id="second"))
    stored = await storage.get_task("t1")
    assert stored is not None and stored.context_id == "first"


async def test_save_task_overwrites_and_requires_existing(storage: Storage) -> None:
    task = make_task("t1")
    await storage.create_task(task)
    done = task.with_status(TaskState.COMPLETED, "done")
    await storage.save_task(done)
    assert await storage.get_task("t1") == done
    with pytest.raises(StorageError):
        await storage.save_task(make_task("missing"))
    assert await storage.get_task("missing") is None


async def test_stored_task_is_a_copy(storage: Storage) -> None:
    task = make_task("t1")
    await storage.create_task(task)
    task.metadata["k"] = "changed by caller"
    got = await storage.get_task("t1")
    assert got is not None and got.metadata == {"k": "v"}
    got.metadata["k"] = "changed again"
    again = await storage.get_task("t1")
    assert again is not None and again.metadata == {"k": "v"}


async def test_list_tasks_oldest_first_then_id(storage: Storage, backend: Backend) -> None:
    await storage.create_task(make_task("m"))  # oldest
    backend.clock.now += timedelta(seconds=1)
    backend.clock.tick = timedelta(0)  # the next three share one created_at: ordered by id
    for task_id in ("c", "a", "b"):
        await storage.create_task(make_task(task_id))
    backend.clock.tick = timedelta(seconds=1)
    await storage.create_task(make_task("0"))  # newest, although its id sorts first
    assert [t.id for t in await storage.list_tasks()] == ["m", "a", "b", "c", "0"]
    # Saving does not move a task: order is by creation.
    await storage.save_task(make_task("m", state=TaskState.WORKING))
    assert [t.id for t in await storage.list_tasks(limit=1)] == ["m"]


async def test_list_tasks_filters_and_pages(storage: Storage) -> None:
    await storage.create_task(make_task("1", context_id="x", state=TaskState.WORKING))
    await storage.create_task(make_task("2", context_id="y", state=TaskState.WORKING))
    await storage.create_task(make_task("3", context_id="x", state=TaskState.COMPLETED))
    await storage.create_task(make_task("4", context_id="x", state=TaskState.WORKING))

    async def ids(**kwargs: Any) -> list[str]:
        return [t.id for t in await storage.list_tasks(**kwargs)]

    assert await ids(context_id="x") == ["1", "3", "4"]
    assert await ids(state=TaskState.WORKING) == ["1", "2", "4"]
    assert await ids(context_id="x", state=TaskState.WORKING) == ["1", "4"]
    assert await ids(context_id="nope") == []
    assert await ids(limit=2) == ["1", "2"]
    assert await ids(limit=2, offset=2) == ["3", "4"]
    assert await ids(limit=0) == []
    assert await ids(context_id="x", limit=1, offset=1) == ["3"]
    with pytest.raises(StorageError):
        await storage.list_tasks(limit=-1)


# Task owners (issue 10): written once at insert, filtered on by tasks/list, never on the wire


async def test_owner_round_trips_and_stays_off_the_wire(storage: Storage) -> None:
    task = make_task("t1").model_copy(update={"owner": "key:alice"})
    await storage.create_task(task)
    await storage.create_task(make_task("t2"))
    got = await storage.get_task("t1")
    assert got is not None and got.owner == "key:alice"
    assert "owner" not in got.wire()
    nobody = await storage.get_task("t2")
    assert nobody is not None and nobody.owner is None
    assert {t.id: t.owner for t in await storage.list_tasks()} == {"t1": "key:alice", "t2": None}


async def test_owner_is_never_changed_by_a_save(storage: Storage) -> None:
    await storage.create_task(make_task("t1").model_copy(update={"owner": "key:alice"}))
    await storage.create_task(make_task("t2"))
    stolen = make_task("t1", state=TaskState.COMPLETED).model_copy(update={"owner": "key:bob"})
    await storage.save_task(stolen)
    await storage.save_task(make_task("t2").model_copy(update={"owner": "key:bob"}))
    got = await storage.get_task("t1")
    assert got is not None and got.owner == "key:alice" and got.state is TaskState.COMPLETED
    unowned = await storage.get_task("t2")
    assert unowned is not None and unowned.owner is None
    assert await storage.list_tasks(owner="key:bob") == []


async def test_transition_inserts_the_owner_and_keeps_it_on_overwrite(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", status=S.VERIFIED, task_id="t1"))
    paid = make_task("t1").model_copy(update={"owner": "wallet:0xabc"})
    assert await storage.transition_payment(
        "p1", [S.VERIFIED], PaymentUpdate(status=S.SETTLING), now=at(1), task=paid
    )
    other = make_task("t1", state=TaskState.WORKING).model_copy(update={"owner": "key:bob"})
    assert await storage.transition_payment(
        "p1", [S.SETTLING], PaymentUpdate(status=S.SETTLED), now=at(2), task=other
    )
    got = await storage.get_task("t1")
    assert got is not None and got.owner == "wallet:0xabc" and got.state is TaskState.WORKING


async def test_list_tasks_by_owner_filters_and_pages(storage: Storage) -> None:
    def owned(task_id: str, owner: str | None, **kw: Any) -> Task:
        return make_task(task_id, **kw).model_copy(update={"owner": owner})

    await storage.create_task(owned("1", "key:a", context_id="x"))
    await storage.create_task(owned("2", "key:b", context_id="x"))
    await storage.create_task(owned("3", None, context_id="x"))
    await storage.create_task(owned("4", "key:a", context_id="y", state=TaskState.COMPLETED))
    await storage.create_task(owned("5", "key:a", context_id="x", state=TaskState.COMPLETED))

    async def ids(**kwargs: Any) -> list[str]:
        return [t.id for t in await storage.list_tasks(**kwargs)]

    assert await ids(owner="key:a") == ["1", "4", "5"]
    assert await ids(owner="key:b") == ["2"]
    assert await ids(owner="key:c") == []
    assert await ids(owner="key:a", context_id="x") == ["1", "5"]
    assert await ids(owner="key:a", state=TaskState.COMPLETED) == ["4", "5"]
    assert await ids(owner="key:a", context_id="x", state=TaskState.COMPLETED) == ["5"]
    assert await ids(owner="key:a", limit=1, offset=1) == ["4"]
    assert await ids(owner="key:a", context_id="x", limit=1, offset=1) == ["5"]
    # No owner given: every task (an operator's view; callers always pass theirs).
    assert await ids() == ["1", "2", "3", "4", "5"]


# Claims


async def test_claim_and_get_round_trip(storage: Storage) -> None:
    record = make_record(
        "p1",
        settle_tx="0xtx",
        error="boom",
        answers=[{"source": "settle", "ok": False}],
        attempts=2,
        next_check_at=at(10),
        lease_owner="w",
        lease_expires_at=at(20),
        receipt=Receipt("0xtx", "eip155:84532", "0xpayer", "10000", "0xasset", 7),
        verdict_at=at(5),
        refund=make_refund(),
    )
    assert await storage.claim_payment(record) is True
    got = await storage.get_payment("p1")
    expected = record.evolve(
        asset=record.asset.lower(), pay_to=record.pay_to.lower(), payer=record.payer.lower()
    )
    assert got == expected
    assert await storage.get_payment("missing") is None


async def test_claim_record_without_json_fields(storage: Storage) -> None:
    record = make_record("p1", payload=None, requirements=None)
    assert await storage.claim_payment(record)
    got = await storage.get_payment("p1")
    assert got is not None
    assert (got.payload, got.requirements, got.answers, got.receipt) == (None, None, [], None)
    assert got.refund is None
    assert got.decode_error is None


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"payer": "0xABCDEF0000000000000000000000000000000001"},
        {"nonce": None},  # the same nonce in upper case, filled in below
        {"asset": "0x036cbd53842c5426634e7929541ec2318f3dcf7e"},
        {"task_id": "another task", "amount": "1", "status": S.VERIFIED},
    ],
    ids=["same", "payer-case", "nonce-case", "asset-case", "other-fields"],
)
async def test_claim_conflict_returns_false(storage: Storage, changes: dict[str, Any]) -> None:
    first = make_record("p1", nonce="0x" + "ab" * 32)
    assert await storage.claim_payment(first)
    if "nonce" in changes:
        changes = {"nonce": "0x" + "AB" * 32}
    assert (
        await storage.claim_payment(make_record("p2", nonce=first.nonce).evolve(**changes)) is False
    )
    assert await storage.get_payment("p2") is None
    assert [r.id for r in await storage.list_payments()] == ["p1"]


async def test_claim_same_nonce_elsewhere_is_allowed(storage: Storage) -> None:
    nonce = "0x" + "cd" * 32
    assert await storage.claim_payment(make_record("p1", nonce=nonce))
    assert await storage.claim_payment(make_record("p2", nonce=nonce, network="eip155:8453"))
    assert await storage.claim_payment(make_record("p3", nonce=nonce, payer="0x" + "1" * 40))
    assert await storage.claim_payment(make_record("p4", nonce=nonce, asset="0x" + "2" * 40))


async def test_claim_stores_lower_case(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", nonce="0x" + "EF" * 32))
    got = await storage.get_payment("p1")
    assert got is not None
    assert got.nonce == "0x" + "ef" * 32
    assert got.payer == got.payer.lower() and got.asset == got.asset.lower()
    assert got.pay_to == got.pay_to.lower()


async def test_claim_duplicate_id_raises(storage: Storage) -> None:
    assert await storage.claim_payment(make_record("p1"))
    with pytest.raises(StorageError):
        await storage.claim_payment(make_record("p1", nonce="0x" + "99" * 32))


async def test_claim_refuses_naive_and_oversized_values(storage: Storage) -> None:
    with pytest.raises(StorageError):
        await storage.claim_payment(make_record("p1", created_at=datetime(2026, 1, 1)))
    with pytest.raises(StorageError):
        await storage.claim_payment(make_record("p2", valid_before=2**64))
    assert await storage.list_payments() == []


async def test_stored_record_is_a_copy(storage: Storage) -> None:
    record = make_record("p1", answers=[{"n": 1}])
    await storage.claim_payment(record)
    assert record.payload is not None
    record.payload["x402Version"] = 99
    record.answers.append({"n": 2})
    got = await storage.get_payment("p1")
    assert got is not None and got.payload is not None
    assert got.payload["x402Version"] == 2 and got.answers == [{"n": 1}]
    got.answers.clear()
    again = await storage.get_payment("p1")
    assert again is not None and again.answers == [{"n": 1}]


async def test_release_claim_deletes_only_claimed(storage: Storage) -> None:
    nonce = "0x" + "11" * 32
    await storage.claim_payment(make_record("claimed", nonce=nonce))
    await storage.claim_payment(make_record("verified", status=S.VERIFIED))
    await storage.release_claim("claimed")
    await storage.release_claim("verified")
    await storage.release_claim("unknown")  # no error
    assert await storage.get_payment("claimed") is None
    assert await storage.get_payment("verified") is not None
    # The nonce is free again.
    assert await storage.claim_payment(make_record("again", nonce=nonce))


async def test_get_payment_for_task_returns_newest(storage: Storage) -> None:
    await storage.claim_payment(make_record("old", task_id="t", created_at=at(1)))
    await storage.claim_payment(make_record("new", task_id="t", created_at=at(2)))
    await storage.claim_payment(make_record("other", task_id="u", created_at=at(3)))
    got = await storage.get_payment_for_task("t")
    assert got is not None and got.id == "new"
    assert await storage.get_payment_for_task("none") is None


# Transitions


async def test_transition_wins_and_records_changes(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", next_check_at=at(1)))
    receipt = Receipt("0xtx", "eip155:84532", "0xpayer", "10000")
    got = await storage.transition_payment(
        "p1",
        [S.CLAIMED],
        PaymentUpdate(
            status=S.VERIFIED,
            settle_tx="0xtx",
            error="late",
            attempts=3,
            next_check_at=at(60),
            receipt=receipt,
            verdict_at=at(50),
        ),
        now=at(40),
    )
    assert got is not None
    assert got.status == S.VERIFIED
    assert (got.settle_tx, got.error, got.attempts) == ("0xtx", "late", 3)
    assert got.next_check_at == at(60) and got.verdict_at == at(50)
    assert got.receipt == receipt
    assert got.updated_at == at(40) and got.created_at == T0
    assert await storage.get_payment("p1") == got


async def test_transition_none_fields_are_unchanged(storage: Storage) -> None:
    record = make_record("p1", settle_tx="0xtx", error="e", attempts=4, next_check_at=at(9))
    await storage.claim_payment(record)
    got = await storage.transition_payment("p1", [S.CLAIMED], PaymentUpdate(), now=at(1))
    assert got is not None
    assert got == (await storage.get_payment("p1"))
    assert (got.status, got.settle_tx, got.error, got.attempts) == (S.CLAIMED, "0xtx", "e", 4)
    assert got.next_check_at == at(9) and got.updated_at == at(1)


async def test_transition_loses_on_unexpected_status(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", status=S.VERIFIED))
    before = await storage.get_payment("p1")
    update = PaymentUpdate(status=S.ORPHANED, error="x")
    assert await storage.transition_payment("p1", [S.SETTLED, S.FAILED], update, now=at(1)) is None
    assert await storage.transition_payment("p1", [], update, now=at(1)) is None
    assert await storage.transition_payment("nope", [S.FAILED], update, now=at(1)) is None
    assert await storage.get_payment("p1") == before


async def test_compare_and_set_only_one_writer_wins(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", status=S.VERIFIED))
    first = await storage.transition_payment(
        "p1", [S.VERIFIED], PaymentUpdate(status=S.SETTLING), now=at(1)
    )
    second = await storage.transition_payment(
        "p1", [S.VERIFIED], PaymentUpdate(status=S.FAILED), now=at(2)
    )
    assert first is not None and second is None
    got = await storage.get_payment("p1")
    assert got is not None and got.status == S.SETTLING and got.updated_at == at(1)


async def test_concurrent_transitions_one_winner(backend: Backend) -> None:
    a, b = await backend.handle(), await backend.handle()
    await a.claim_payment(make_record("p1", status=S.SETTLED))
    results = await asyncio.gather(
        a.transition_payment("p1", [S.SETTLED], PaymentUpdate(status=S.COMPLETED), now=at(1)),
        b.transition_payment("p1", [S.SETTLED], PaymentUpdate(status=S.ORPHANED), now=at(1)),
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await a.get_payment("p1") == winners[0]


async def test_transition_checks_lease_owner(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(0)))
    [leased] = await storage.claim_due_payments(now=at(1), limit=1, owner="w1", lease_seconds=30)
    assert leased.lease_owner == "w1"
    update = PaymentUpdate(attempts=1)
    assert (
        await storage.transition_payment("p1", [S.SETTLING], update, now=at(2), lease_owner="w2")
        is None
    )
    got = await storage.transition_payment("p1", [S.SETTLING], update, now=at(3), lease_owner="w1")
    assert got is not None and got.attempts == 1
    # Without lease_owner the lease is not checked.
    assert await storage.transition_payment("p1", [S.SETTLING], update, now=at(4)) is not None


async def test_transition_with_lease_owner_refuses_unleased_record(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", status=S.VERIFIED))
    update = PaymentUpdate(status=S.SETTLING)
    assert (
        await storage.transition_payment("p1", [S.VERIFIED], update, now=at(1), lease_owner="w")
        is None
    )


async def test_transition_appends_answers(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", answers=[{"n": 0}]))
    for n in (1, 2):
        got = await storage.transition_payment(
            "p1", [S.CLAIMED], PaymentUpdate(answer={"n": n, "nested": {"ok": True}}), now=at(n)
        )
        assert got is not None
    got = await storage.get_payment("p1")
    assert got is not None
    assert got.answers == [
        {"n": 0},
        {"n": 1, "nested": {"ok": True}},
        {"n": 2, "nested": {"ok": True}},
    ]


async def test_transition_clear_error(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", error="first"))
    got = await storage.transition_payment(
        "p1", [S.CLAIMED], PaymentUpdate(error="second"), now=at(1)
    )
    assert got is not None and got.error == "second"
    got = await storage.transition_payment(
        "p1", [S.CLAIMED], PaymentUpdate(clear_error=True), now=at(2)
    )
    assert got is not None and got.error is None
    # A new error together with clear_error: the new error is kept.
    got = await storage.transition_payment(
        "p1", [S.CLAIMED], PaymentUpdate(error="third", clear_error=True), now=at(3)
    )
    assert got is not None and got.error == "third"


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
async def test_final_status_clears_next_check(storage: Storage, final: PaymentStatus) -> None:
    # From a status with an edge to ``final`` (refunded only follows orphaned).
    source = S.ORPHANED if final is S.REFUNDED else S.SETTLED if final is S.COMPLETED else S.FAILED
    await storage.claim_payment(due_record("p1", at(5), status=source))
    got = await storage.transition_payment(
        "p1", [source], PaymentUpdate(status=final, next_check_at=at(99)), now=at(1)
    )
    assert got is not None and got.status == final and got.next_check_at is None
    stored = await storage.get_payment("p1")
    assert stored is not None and stored.next_check_at is None


async def test_open_status_keeps_or_sets_next_check(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(5)))
    got = await storage.transition_payment(
        "p1", [S.SETTLING], PaymentUpdate(status=S.FAILED), now=at(1)
    )
    assert got is not None and got.next_check_at == at(5)
    got = await storage.transition_payment(
        "p1", [S.FAILED], PaymentUpdate(next_check_at=at(30)), now=at(2)
    )
    assert got is not None and got.next_check_at == at(30)


async def test_transition_release_lease(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(0)))
    await storage.claim_due_payments(now=at(1), limit=5, owner="w", lease_seconds=60)
    got = await storage.transition_payment(
        "p1", [S.SETTLING], PaymentUpdate(release_lease=True), now=at(2), lease_owner="w"
    )
    assert got is not None and got.lease_owner is None and got.lease_expires_at is None
    # Released: due again right away, long before the lease would have run out.
    again = await storage.claim_due_payments(now=at(3), limit=5, owner="w2", lease_seconds=60)
    assert [r.id for r in again] == ["p1"]


async def test_transition_saves_new_task_atomically(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1", status=S.SETTLED, task_id="t1"))
    task = make_task("t1", state=TaskState.COMPLETED)
    got = await storage.transition_payment(
        "p1", [S.SETTLED], PaymentUpdate(status=S.COMPLETED), now=at(1), task=task
    )
    assert got is not None
    assert await storage.get_task("t1") == task


async def test_transition_overwrites_existing_task(storage: Storage) -> None:
    await storage.create_task(make_task("t0"))
    await storage.create_task(make_task("t1"))
    await storage.claim_payment(make_record("p1", status=S.SETTLED, task_id="t0"))
    done = make_task("t0", state=TaskState.COMPLETED)
    assert await storage.transition_payment(
        "p1", [S.SETTLED], PaymentUpdate(status=S.COMPLETED), now=at(100), task=done
    )
    assert await storage.get_task("t0") == done
    # created_at is kept: t0 still lists first.
    assert [t.id for t in await storage.list_tasks()] == ["t0", "t1"]


async def test_lost_transition_does_not_save_task(storage: Storage) -> None:
    await storage.create_task(make_task("t0"))
    await storage.claim_payment(make_record("p1", status=S.COMPLETED, task_id="t0"))
    update = PaymentUpdate(status=S.FAILED)
    changed = make_task("t0", state=TaskState.FAILED)
    assert (
        await storage.transition_payment("p1", [S.VERIFIED], update, now=at(1), task=changed)
        is None
    )
    assert await storage.get_task("t0") == make_task("t0")
    new = make_task("t-new")
    assert await storage.transition_payment("p1", [S.VERIFIED], update, now=at(1), task=new) is None
    assert await storage.get_task("t-new") is None


async def test_times_come_back_in_utc(storage: Storage) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 1, 2, 0, tzinfo=plus2)  # == T0
    await storage.claim_payment(make_record("p1", created_at=local, next_check_at=local))
    got = await storage.transition_payment(
        "p1", [S.CLAIMED], PaymentUpdate(verdict_at=local), now=local + timedelta(seconds=1)
    )
    assert got is not None
    for value in (got.created_at, got.next_check_at, got.verdict_at, got.updated_at):
        assert value is not None and value.tzinfo == UTC
    assert got.created_at == T0 and got.updated_at == at(1)
    with pytest.raises(StorageError):
        await storage.transition_payment(
            "p1", [S.CLAIMED], PaymentUpdate(), now=datetime(2026, 1, 1)
        )


# Reconciler leases


async def test_claim_due_order_limit_and_filters(storage: Storage) -> None:
    await storage.claim_payment(due_record("b", at(10)))
    await storage.claim_payment(due_record("a", at(10)))  # same time: id breaks the tie
    await storage.claim_payment(due_record("c", at(5), status=S.FAILED))
    await storage.claim_payment(due_record("d", at(20)))
    await storage.claim_payment(due_record("future", at(100)))
    await storage.claim_payment(make_record("no-check", status=S.VERIFIED))
    await storage.claim_payment(due_record("claimed", at(1), status=S.CLAIMED))
    await storage.claim_payment(due_record("done", at(1), status=S.UNRESOLVED))
    await storage.claim_payment(
        due_record("leased", at(1), lease_owner="other", lease_expires_at=at(60))
    )

    first = await storage.claim_due_payments(now=at(30), limit=2, owner="w", lease_seconds=15)
    assert [r.id for r in first] == ["c", "a"]
    assert all(r.lease_owner == "w" and r.lease_expires_at == at(45) for r in first)
    rest = await storage.claim_due_payments(now=at(30), limit=10, owner="w", lease_seconds=15)
    assert [r.id for r in rest] == ["b", "d"]
    assert await storage.claim_due_payments(now=at(30), limit=10, owner="w", lease_seconds=15) == []
    stored = await storage.get_payment("a")
    assert stored is not None and stored.lease_owner == "w" and stored.lease_expires_at == at(45)
    untouched = await storage.get_payment("future")
    assert untouched is not None and untouched.lease_owner is None


async def test_claim_due_boundaries(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(10)))
    assert await storage.claim_due_payments(now=at(9), limit=5, owner="w", lease_seconds=5) == []
    got = await storage.claim_due_payments(now=at(10), limit=5, owner="w", lease_seconds=5)
    assert [r.id for r in got] == ["p1"]  # next_check_at == now is due
    assert await storage.claim_due_payments(now=at(14), limit=5, owner="x", lease_seconds=5) == []
    # lease_expires_at == now: the lease is over.
    got = await storage.claim_due_payments(now=at(15), limit=5, owner="x", lease_seconds=5)
    assert [r.lease_owner for r in got] == ["x"]
    assert await storage.claim_due_payments(now=at(15), limit=0, owner="y", lease_seconds=5) == []


async def test_expired_lease_can_be_taken_over(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(0)))
    await storage.claim_due_payments(now=at(1), limit=1, owner="w1", lease_seconds=10)
    assert await storage.claim_due_payments(now=at(5), limit=1, owner="w2", lease_seconds=10) == []
    [taken] = await storage.claim_due_payments(now=at(11), limit=1, owner="w2", lease_seconds=10)
    assert taken.lease_owner == "w2" and taken.lease_expires_at == at(21)
    # The old holder's writes now lose.
    update = PaymentUpdate(status=S.SETTLED)
    assert (
        await storage.transition_payment("p1", [S.SETTLING], update, now=at(12), lease_owner="w1")
        is None
    )


async def test_concurrent_claimers_never_share(backend: Backend) -> None:
    a, b = await backend.handle(), await backend.handle()
    ids = [f"p{n:02d}" for n in range(20)]
    for n, payment_id in enumerate(ids):
        await a.claim_payment(due_record(payment_id, at(n % 7)))
    for round_ in range(3):
        now = at(100 + round_ * 100)  # every earlier lease (60 s) has expired
        got_a, got_b = await asyncio.gather(
            a.claim_due_payments(now=now, limit=15, owner="a", lease_seconds=60),
            b.claim_due_payments(now=now, limit=15, owner="b", lease_seconds=60),
        )
        ids_a, ids_b = {r.id for r in got_a}, {r.id for r in got_b}
        assert not ids_a & ids_b
        assert ids_a | ids_b == set(ids)
        assert {r.lease_owner for r in got_a} <= {"a"} and {r.lease_owner for r in got_b} <= {"b"}
        for payment_id in ids:
            stored = await a.get_payment(payment_id)
            assert stored is not None
            assert stored.lease_owner == ("a" if payment_id in ids_a else "b")


# Listing


async def test_list_payments_order_filters_and_pages(storage: Storage) -> None:
    await storage.claim_payment(make_record("c", created_at=at(1), status=S.VERIFIED))
    await storage.claim_payment(make_record("b", created_at=at(2), status=S.FAILED))
    await storage.claim_payment(make_record("a", created_at=at(2), status=S.COMPLETED))
    await storage.claim_payment(make_record("d", created_at=at(3), status=S.VERIFIED))

    async def ids(**kwargs: Any) -> list[str]:
        return [r.id for r in await storage.list_payments(**kwargs)]

    assert await ids() == ["c", "a", "b", "d"]
    assert await ids(statuses=OPEN) == ["c", "b", "d"]
    assert await ids(statuses=[S.COMPLETED]) == ["a"]
    assert await ids(statuses=[]) == []
    assert await ids(created_before=at(2)) == ["c"]  # strictly before
    assert await ids(created_before=at(3), statuses=[S.VERIFIED]) == ["c"]
    assert await ids(limit=2) == ["c", "a"]
    assert await ids(limit=2, offset=3) == ["d"]
    with pytest.raises(StorageError):
        await storage.list_payments(offset=-1)


async def test_count_payments(storage: Storage) -> None:
    assert await storage.count_payments() == dict.fromkeys(PaymentStatus, 0)
    await storage.claim_payment(make_record("1", status=S.VERIFIED))
    await storage.claim_payment(make_record("2", status=S.VERIFIED))
    await storage.claim_payment(make_record("3", status=S.CLAIMED))
    await storage.transition_payment("2", [S.VERIFIED], PaymentUpdate(status=S.FAILED), now=at(1))
    counts = await storage.count_payments()
    assert counts == {**dict.fromkeys(PaymentStatus, 0), S.VERIFIED: 1, S.FAILED: 1, S.CLAIMED: 1}


# Reopening


async def test_reopen_keeps_data(backend: Backend) -> None:
    first = await backend.handle()
    await first.create_task(make_task("t1"))
    await first.claim_payment(make_record("p1"))
    await first.close()
    second = await backend.handle()
    await second.open()  # opening an open storage is harmless
    assert await second.get_task("t1") == make_task("t1")
    got = await second.get_payment("p1")
    assert got is not None and got.id == "p1"


# Refunds (migration 2)


async def test_transition_records_refund(storage: Storage) -> None:
    receipt = Receipt("0xpaid", "eip155:84532", "0xpayer", "10000", "0xasset", 3)
    await storage.claim_payment(make_record("p1", status=S.ORPHANED, receipt=receipt))
    refund = make_refund(block_number=None, checked_on_chain=False, note=None)
    got = await storage.transition_payment(
        "p1", [S.ORPHANED], PaymentUpdate(status=S.REFUNDED, refund=refund), now=at(60)
    )
    assert got is not None
    assert got.status == S.REFUNDED and got.refund == refund and got.receipt == receipt
    assert await storage.get_payment("p1") == got
    # A refunded payment is final: no further write, the refund stays as it is.
    with pytest.raises(IllegalTransition):
        await storage.transition_payment("p1", [S.REFUNDED], PaymentUpdate(error="x"), now=at(61))
    again = await storage.get_payment("p1")
    assert again is not None and again.refund == refund and again.error is None


async def test_refund_times_come_back_in_utc(storage: Storage) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2026, 1, 1, 2, 0, tzinfo=plus2)  # == T0
    await storage.claim_payment(make_record("p1", status=S.ORPHANED))
    got = await storage.transition_payment(
        "p1",
        [S.ORPHANED],
        PaymentUpdate(status=S.REFUNDED, refund=make_refund(recorded_at=local)),
        now=at(1),
    )
    assert got is not None and got.refund is not None
    assert got.refund.recorded_at == T0 and got.refund.recorded_at.tzinfo == UTC
    naive = make_refund(recorded_at=datetime(2026, 1, 1))
    await storage.claim_payment(make_record("p3", status=S.ORPHANED))
    with pytest.raises(StorageError):
        await storage.transition_payment(
            "p3", [S.ORPHANED], PaymentUpdate(status=S.REFUNDED, refund=naive), now=at(2)
        )
    with pytest.raises(StorageError):
        await storage.claim_payment(make_record("p2", refund=naive))
    stored = await storage.get_payment("p3")
    assert stored is not None and stored.status == S.ORPHANED and stored.refund is None
    assert await storage.get_payment("p2") is None


# The refund ledger (migration 6): one refund transaction per (network, tx)

REFUND_TX = "0x" + "ee" * 32


async def _orphans(storage: Storage, *ids: str, **changes: Any) -> None:
    for payment_id in ids:
        assert await storage.claim_payment(make_record(payment_id, status=S.ORPHANED, **changes))


def _refunding(tx: str = REFUND_TX) -> PaymentUpdate:
    return PaymentUpdate(status=S.REFUNDED, refund=make_refund(transaction=tx))


async def test_one_refund_tx_refunds_one_payment(storage: Storage) -> None:
    await _orphans(storage, "p1", "p2")
    await storage.create_task(make_task("task-p2", state=TaskState.FAILED))
    assert await storage.transition_payment("p1", [S.ORPHANED], _refunding(), now=at(1))
    before = await storage.get_payment("p2")
    refunded_task = make_task("task-p2", state=TaskState.COMPLETED)
    # Any hex case is the same transaction.
    for tx in (REFUND_TX, REFUND_TX.upper().replace("0X", "0x")):
        with pytest.raises(RefundTxTaken) as info:
            await storage.transition_payment(
                "p2", [S.ORPHANED], _refunding(tx), now=at(2), task=refunded_task
            )
        assert info.value.holder == "p1" and info.value.tx == REFUND_TX
        assert "already the refund of payment p1" in str(info.value)
        assert isinstance(info.value, StorageError)
    # Nothing changed: not the record, not the task saved with it.
    assert await storage.get_payment("p2") == before
    task = await storage.get_task("task-p2")
    assert task is not None and task.state == TaskState.FAILED
    # Another transaction refunds it.
    other = "0x" + "ef" * 32
    done = await storage.transition_payment("p2", [S.ORPHANED], _refunding(other), now=at(3))
    assert done is not None and done.refund is not None and done.refund.transaction == other


async def test_the_refund_ledger_is_per_network(storage: Storage) -> None:
    await _orphans(storage, "p1")
    await _orphans(storage, "p2", network="eip155:8453")
    assert await storage.transition_payment("p1", [S.ORPHANED], _refunding(), now=at(1))
    assert await storage.transition_payment("p2", [S.ORPHANED], _refunding(), now=at(2))


async def test_a_lost_compare_and_set_books_no_refund(storage: Storage) -> None:
    await _orphans(storage, "p1", "p2")
    # Lost on the lease (refunded is reachable from orphaned only, so not on the status).
    lost = await storage.transition_payment(
        "p1", [S.ORPHANED], _refunding(), now=at(1), lease_owner="someone-else"
    )
    assert lost is None
    assert await storage.transition_payment("p2", [S.ORPHANED], _refunding(), now=at(2))


async def test_a_refused_refund_update_books_nothing(storage: Storage) -> None:
    await _orphans(storage, "p1", "p2")
    naive = PaymentUpdate(status=S.REFUNDED, refund=make_refund(recorded_at=datetime(2026, 1, 1)))
    with pytest.raises(StorageError):
        await storage.transition_payment("p1", [S.ORPHANED], naive, now=at(1))
    assert await storage.transition_payment("p2", [S.ORPHANED], _refunding(), now=at(2))


async def test_two_writers_race_for_one_refund_tx(backend: Backend) -> None:
    """Two operators (two connections/pools, as two CLI processes) record one transfer as
    the refund of two orphans at once: exactly one wins, the other is told who holds it."""
    first = await backend.handle()
    second = await backend.handle()
    for round_ in range(5):
        ids = (f"a{round_}", f"b{round_}")
        await _orphans(first, *ids)
        tx = "0x" + f"{round_:02x}" * 32
        results = await asyncio.gather(
            first.transition_payment(ids[0], [S.ORPHANED], _refunding(tx), now=at(1)),
            second.transition_payment(ids[1], [S.ORPHANED], _refunding(tx), now=at(1)),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, PaymentRecord)]
        lost = [r for r in results if isinstance(r, RefundTxTaken)]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0].holder == won[0].id
        statuses = {r.id: r.status for r in await first.list_payments(statuses=[S.REFUNDED])}
        assert set(statuses) >= {won[0].id} and not set(statuses) & (set(ids) - {won[0].id})


# payment-fulfilling (migration 2)


@pytest.mark.parametrize("status", list(PaymentStatus))
async def test_claim_due_takes_exactly_the_open_statuses(
    storage: Storage, status: PaymentStatus
) -> None:
    await storage.claim_payment(due_record("p1", at(0), status=status))
    got = await storage.claim_due_payments(now=at(1), limit=5, owner="w", lease_seconds=5)
    assert [r.id for r in got] == (["p1"] if status in OPEN_STATUSES else [])


async def test_fulfilling_keeps_next_check_and_is_claimed_when_due(storage: Storage) -> None:
    await storage.claim_payment(due_record("p1", at(0), status=S.FAILED))
    [leased] = await storage.claim_due_payments(now=at(1), limit=5, owner="w", lease_seconds=30)
    assert leased.lease_owner == "w"
    got = await storage.transition_payment(
        "p1",
        [S.FAILED],
        PaymentUpdate(status=S.FULFILLING, next_check_at=at(100)),
        now=at(2),
        lease_owner="w",
    )
    assert got is not None and got.status == S.FULFILLING and got.next_check_at == at(100)
    kept = await storage.transition_payment(
        "p1", [S.FULFILLING], PaymentUpdate(attempts=1), now=at(3)
    )
    assert kept is not None and kept.next_check_at == at(100)
    # A fulfilment whose process died: due again once its check time and lease pass.
    assert await storage.claim_due_payments(now=at(99), limit=5, owner="x", lease_seconds=5) == []
    [again] = await storage.claim_due_payments(now=at(100), limit=5, owner="x", lease_seconds=5)
    assert again.id == "p1" and again.status == S.FULFILLING and again.lease_owner == "x"
    done = await storage.transition_payment(
        "p1", [S.FULFILLING], PaymentUpdate(status=S.COMPLETED), now=at(101), lease_owner="x"
    )
    assert done is not None and done.next_check_at is None


# Stats


async def test_payment_stats_empty(storage: Storage) -> None:
    assert await storage.payment_stats() == dict.fromkeys(PaymentStatus, StatusStats(0, None))


async def test_payment_stats_counts_and_oldest(storage: Storage) -> None:
    await storage.claim_payment(make_record("v1", status=S.VERIFIED, created_at=at(30)))
    await storage.claim_payment(make_record("v2", status=S.VERIFIED, created_at=at(10)))
    await storage.claim_payment(make_record("v3", status=S.VERIFIED, created_at=at(20)))
    await storage.claim_payment(make_record("o1", status=S.ORPHANED, created_at=at(5)))
    await storage.claim_payment(make_record("f1", status=S.FAILED, created_at=at(40)))
    # A transition moves a record between statuses; created_at stays.
    await storage.transition_payment("f1", [S.FAILED], PaymentUpdate(status=S.VOID), now=at(50))
    stats = await storage.payment_stats()
    assert stats == {
        **dict.fromkeys(PaymentStatus, StatusStats(0, None)),
        S.VERIFIED: StatusStats(3, at(10)),
        S.ORPHANED: StatusStats(1, at(5)),
        S.VOID: StatusStats(1, at(40)),
    }
    for value in stats.values():
        assert value.oldest_created_at is None or value.oldest_created_at.tzinfo == UTC
    counts = await storage.count_payments()
    assert {status: value.count for status, value in stats.items()} == counts


# Push notification configs (migration 2)


async def test_push_config_set_get_replace(storage: Storage) -> None:
    assert await storage.get_push_config("t1") is None
    config = {"url": "https://client.example/hook", "token": "secret", "nested": {"n": [1, 2]}}
    await storage.set_push_config("t1", config)
    assert await storage.get_push_config("t1") == config
    assert await storage.get_push_config("t2") is None
    replaced = {"url": "https://client.example/other"}
    await storage.set_push_config("t1", replaced)
    assert await storage.get_push_config("t1") == replaced
    await storage.set_push_config("t2", {})
    assert await storage.get_push_config("t2") == {}
    assert await storage.get_push_config("t1") == replaced


async def test_push_config_is_a_copy(storage: Storage) -> None:
    config: dict[str, Any] = {"url": "https://x", "headers": {"a": "1"}}
    await storage.set_push_config("t1", config)
    config["headers"]["a"] = "changed by caller"
    got = await storage.get_push_config("t1")
    assert got == {"url": "https://x", "headers": {"a": "1"}}
    assert got is not None
    got["url"] = "changed again"
    assert await storage.get_push_config("t1") == {"url": "https://x", "headers": {"a": "1"}}


@pytest.mark.parametrize(
    "config",
    [["not", "an", "object"], {"x": object()}, {"x": float("nan")}],
    ids=["list", "not-json", "nan"],
)
async def test_push_config_refuses_non_json(storage: Storage, config: Any) -> None:
    await storage.set_push_config("t1", {"url": "https://kept"})
    with pytest.raises(StorageError):
        await storage.set_push_config("t1", config)
    assert await storage.get_push_config("t1") == {"url": "https://kept"}


async def test_push_config_survives_reopen(backend: Backend) -> None:
    first = await backend.handle()
    await first.set_push_config("t1", {"url": "https://x"})
    await first.close()
    second = await backend.handle()
    assert await second.get_push_config("t1") == {"url": "https://x"}


# The lifecycle table, enforced by storage (migration 3)


def _illegal_count(source: PaymentStatus, target: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "bindu_illegal_transitions_total", {"from": source.value, "to": target}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (S.VERIFIED, S.COMPLETED),
        (S.VERIFIED, S.FULFILLING),
        (S.COMPLETED, S.ORPHANED),
        (S.SETTLED, S.FAILED),
        (S.SETTLED, S.SETTLING),
        (S.VOID, S.ORPHANED),
        (S.CLAIMED, S.SETTLING),
    ],
)
async def test_an_illegal_transition_is_refused_counted_and_changes_nothing(
    storage: Storage, source: PaymentStatus, target: PaymentStatus
) -> None:
    await storage.create_task(make_task("t1"))
    await storage.claim_payment(make_record("p1", status=source, task_id="t1"))
    before = await storage.get_payment("p1")
    counted = _illegal_count(source, target.value)
    with pytest.raises(IllegalTransition, match=f"{source.value} -> {target.value}"):
        await storage.transition_payment(
            "p1",
            [source],
            PaymentUpdate(status=target, error="x", answer={"n": 1}),
            now=at(1),
            task=make_task("t1", state=TaskState.COMPLETED),
        )
    assert await storage.get_payment("p1") == before
    assert await storage.get_task("t1") == make_task("t1")
    assert _illegal_count(source, target.value) == counted + 1


async def test_one_illegal_expected_status_refuses_the_whole_write(storage: Storage) -> None:
    # Even when the stored status is the legal one: the caller's picture is wrong.
    await storage.claim_payment(make_record("p1", status=S.FAILED))
    before = await storage.get_payment("p1")
    with pytest.raises(IllegalTransition):
        await storage.transition_payment(
            "p1", [S.FAILED, S.VERIFIED], PaymentUpdate(status=S.ORPHANED), now=at(1)
        )
    assert await storage.get_payment("p1") == before


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
async def test_bookkeeping_on_a_final_record_is_refused(
    storage: Storage, final: PaymentStatus
) -> None:
    await storage.claim_payment(make_record("p1", status=final))
    before = await storage.get_payment("p1")
    with pytest.raises(IllegalTransition):
        await storage.transition_payment("p1", [final], PaymentUpdate(attempts=9), now=at(1))
    assert await storage.get_payment("p1") == before


@pytest.mark.parametrize(
    "status", sorted(set(PaymentStatus) - FINAL_STATUSES), ids=lambda s: s.value
)
async def test_bookkeeping_on_an_unfinished_record_is_allowed(
    storage: Storage, status: PaymentStatus
) -> None:
    await storage.claim_payment(make_record("p1", status=status))
    got = await storage.transition_payment(
        "p1", [status], PaymentUpdate(attempts=2, answer={"n": 1}), now=at(1)
    )
    assert got is not None and got.status == status and got.attempts == 2


async def test_the_payment_walks_the_happy_path(storage: Storage) -> None:
    await storage.claim_payment(make_record("p1"))
    for source, target in [
        (S.CLAIMED, S.VERIFIED),
        (S.VERIFIED, S.SETTLING),
        (S.SETTLING, S.SETTLED),
        (S.SETTLED, S.COMPLETED),
    ]:
        got = await storage.transition_payment(
            "p1", [source], PaymentUpdate(status=target), now=at(1)
        )
        assert got is not None and got.status == target


async def test_a_worker_lease_makes_its_write_lose_once_taken_over(storage: Storage) -> None:
    # The worker holds its settling record until its deadline; a reconciler takes it
    # after that, and the worker's late "settled" must then lose.
    await storage.claim_payment(make_record("p1", status=S.VERIFIED))
    got = await storage.transition_payment(
        "p1",
        [S.VERIFIED],
        PaymentUpdate(status=S.SETTLING, next_check_at=at(10), lease_to="w", lease_until=at(10)),
        now=at(1),
    )
    assert got is not None and (got.lease_owner, got.lease_expires_at) == ("w", at(10))
    assert await storage.claim_due_payments(now=at(9), limit=5, owner="r", lease_seconds=5) == []
    [taken] = await storage.claim_due_payments(now=at(10), limit=5, owner="r", lease_seconds=5)
    assert taken.lease_owner == "r"
    settled = PaymentUpdate(status=S.SETTLED, settle_tx="0xtx")
    assert (
        await storage.transition_payment("p1", [S.SETTLING], settled, now=at(11), lease_owner="w")
        is None
    )
    # Extending one's own lease keeps it; releasing clears both columns.
    mine = await storage.transition_payment(
        "p1",
        [S.SETTLING],
        PaymentUpdate(lease_to="r", lease_until=at(30)),
        now=at(12),
        lease_owner="r",
    )
    assert mine is not None and mine.lease_expires_at == at(30)
    freed = await storage.transition_payment(
        "p1", [S.SETTLING], PaymentUpdate(release_lease=True, lease_to="x"), now=at(13)
    )
    assert freed is not None and (freed.lease_owner, freed.lease_expires_at) == (None, None)


# Stale claims (migration 3)


async def test_sweep_claims_deletes_only_old_claims(storage: Storage) -> None:
    await storage.claim_payment(make_record("old", created_at=at(0)))
    await storage.claim_payment(make_record("older", created_at=at(-5)))
    await storage.claim_payment(make_record("fresh", created_at=at(10)))
    await storage.claim_payment(make_record("edge", created_at=at(5)))
    await storage.claim_payment(make_record("verified", status=S.VERIFIED, created_at=at(-9)))
    await storage.claim_payment(make_record("failed", status=S.FAILED, created_at=at(-9)))
    assert await storage.sweep_claims(created_before=at(5), limit=1) == ["older"]
    assert await storage.sweep_claims(created_before=at(5), limit=10) == ["old"]
    assert await storage.sweep_claims(created_before=at(5), limit=10) == []
    left = sorted(r.id for r in await storage.list_payments())
    assert left == ["edge", "failed", "fresh", "verified"]
    # The nonce is free again: the same authorization can be claimed anew.
    assert await storage.claim_payment(make_record("old", created_at=at(20)))
    with pytest.raises(StorageError):
        await storage.sweep_claims(created_before=datetime(2026, 1, 1), limit=1)
