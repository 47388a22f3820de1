"""Conformance cases that need raw SQL, run against SQLite and Postgres: corrupt rows are
flagged (not raised), migrations are idempotent and race-free, and the reconciler's
candidate query uses the partial index."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from bindu.a2a import TaskState
from bindu.errors import RefundTxTaken, StorageError
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate, Receipt, StatusStats
from bindu.storage import sqlite as sqlite_backend
from bindu.storage.codec import normalize_payment, payment_params, utc_opt
from bindu.storage.queries import load_queries

from .conftest import Backend
from .test_storage_conformance import at, due_record, make_record, make_refund, make_task

S = PaymentStatus

# column[_variant] -> (SQLite raw value, Postgres raw SQL expression, expected decode_error
# fragment)
CORRUPTIONS: dict[str, tuple[str, str, str]] = {
    "payload": ("{not json", "'\"not an object\"'::jsonb", "payload"),
    "requirements": ("[1, 2", "'[1, 2]'::jsonb", "requirements"),
    "answers": ("oops", "'{\"a\": 1}'::jsonb", "answers"),
    "receipt": ('{"network": "x"}', '\'{"network": "x"}\'::jsonb', "receipt: missing"),
    "status": ("payment-bogus", "'payment-bogus'", "status: unknown"),
    "refund": ('{"transaction": "0x1"}', '\'{"amount": "1"}\'::jsonb', "refund: missing"),
    "refund_time": (
        '{"transaction": "0x1", "amount": "1", "recordedAt": "yesterday"}',
        '\'{"transaction": "0x1", "amount": "1", "recordedAt": "2026-01-01T00:00:00"}\'::jsonb',
        "refund: malformed",
    ),
    "refund_text": ("{oops", "'[]'::jsonb", "refund"),
}


async def corrupt(backend: Backend, payment_id: str, corruption: str) -> None:
    sqlite_value, postgres_expr, _ = CORRUPTIONS[corruption]
    column = corruption.split("_")[0]
    # Test-only SQL: the column name comes from the fixed table above.
    if backend.name == "sqlite":
        await backend.execute(
            f"UPDATE payments SET {column} = :value WHERE id = :id",
            {"value": sqlite_value, "id": payment_id},
        )
    else:
        await backend.execute(
            f"UPDATE payments SET {column} = {postgres_expr} WHERE id = %(id)s",
            {"id": payment_id},
        )


@pytest.mark.parametrize("column", sorted(CORRUPTIONS))
async def test_corrupt_row_is_flagged_not_raised(sql_backend: Backend, column: str) -> None:
    storage = await sql_backend.handle()
    good = due_record("p1", at(0), answers=[{"n": 1}], task_id="t1", refund=make_refund())
    await storage.claim_payment(good)
    await storage.claim_payment(make_record("p2"))
    await corrupt(sql_backend, "p1", column)

    got = await storage.get_payment("p1")
    assert got is not None
    assert got.decode_error is not None and CORRUPTIONS[column][2] in got.decode_error
    # Only the broken field is lost.
    expected: dict[str, Any] = {
        "payload": None if column == "payload" else good.payload,
        "requirements": None if column == "requirements" else good.requirements,
        "answers": [] if column == "answers" else good.answers,
        "receipt": None,
        "status": S.FAILED if column == "status" else S.SETTLING,
        "refund": None if column.startswith("refund") else good.refund,
    }
    assert {name: getattr(got, name) for name in expected} == expected
    assert (got.id, got.payer, got.nonce, got.next_check_at) == (
        good.id,
        good.payer.lower(),
        good.nonce,
        good.next_check_at,
    )

    # Every read path returns it flagged; the healthy neighbour is unaffected.
    listed = {r.id: r for r in await storage.list_payments()}
    assert listed["p1"].decode_error == got.decode_error
    assert listed["p2"].decode_error is None
    for_task = await storage.get_payment_for_task("t1")
    assert for_task is not None and for_task.decode_error == got.decode_error
    if column != "status":  # an unknown status is not a reconciler candidate in SQL
        [due] = await storage.claim_due_payments(now=at(1), limit=5, owner="w", lease_seconds=5)
        assert due.id == "p1" and due.decode_error == got.decode_error


async def test_corrupt_record_can_be_finalised(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    await storage.claim_payment(make_record("p1", status=S.FAILED, answers=[{"n": 1}]))
    await corrupt(sql_backend, "p1", "answers")
    got = await storage.transition_payment(
        "p1",
        [S.FAILED],
        PaymentUpdate(status=S.UNRESOLVED, error="corrupt", answer={"n": 2}),
        now=at(1),
    )
    assert got is not None
    assert got.status == S.UNRESOLVED and got.answers == [{"n": 2}] and got.decode_error is None


async def test_unknown_status_counts_as_failed(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    await storage.claim_payment(make_record("p1", status=S.VERIFIED))
    await storage.claim_payment(make_record("p2", status=S.FAILED))
    await corrupt(sql_backend, "p1", "status")
    counts = await storage.count_payments()
    assert counts[S.FAILED] == 2 and counts[S.VERIFIED] == 0


async def test_migrations_are_idempotent(sql_backend: Backend) -> None:
    first = await sql_backend.handle()
    await first.create_task(make_task("t1"))
    await first.claim_payment(make_record("p1"))
    await first.close()
    for _ in range(2):
        again = await sql_backend.handle()
        assert await again.get_task("t1") == make_task("t1")
        assert await again.get_payment("p1") is not None
        await again.close()
    rows = await sql_backend.execute("SELECT version FROM bindu_schema_version ORDER BY version")
    versions = [row[0] if isinstance(row, tuple) else row["version"] for row in rows]
    dialect = "sqlite" if sql_backend.name == "sqlite" else "postgres"
    assert versions == [m.version for m in load_queries(dialect).migrations]


async def test_replicas_starting_together_migrate_once(sql_backend: Backend) -> None:
    storages = [sql_backend.make() for _ in range(4)]
    sql_backend.opened.extend(storages)
    await asyncio.gather(*(s.open() for s in storages))
    rows = await sql_backend.execute("SELECT count(*) FROM bindu_schema_version")
    count = rows[0][0] if isinstance(rows[0], tuple) else rows[0]["count"]
    assert count == len(load_queries("sqlite").migrations)
    await storages[0].claim_payment(make_record("p1"))
    assert await storages[3].get_payment("p1") is not None


async def test_newer_schema_is_refused(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    await storage.close()
    if sql_backend.name == "sqlite":
        await sql_backend.execute(
            "INSERT INTO bindu_schema_version (version, applied_at) VALUES (999, 'x')"
        )
    else:
        await sql_backend.execute(
            "INSERT INTO bindu_schema_version (version, applied_at) VALUES (999, now())"
        )
    with pytest.raises(StorageError, match="newer"):
        await sql_backend.handle()


async def test_claim_due_uses_partial_index(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    for n in range(5):
        await storage.claim_payment(due_record(f"p{n}", at(n)))
    if sql_backend.name == "sqlite":
        query = load_queries("sqlite")["claim_due_payments"]
        params = {"now": "x", "limit": 5, "owner": "w", "lease_expires_at": "y"}
        plan = "\n".join(
            str(row[-1]) for row in await sql_backend.execute(f"EXPLAIN QUERY PLAN {query}", params)
        )
        assert "USING INDEX payments_due" in plan, plan
        assert "SCAN payments\n" not in plan + "\n", plan
        partial = await sql_backend.execute(
            "SELECT partial FROM pragma_index_list('payments') WHERE name = 'payments_due'"
        )
        assert partial == [(1,)]
    else:
        query = load_queries("postgres")["claim_due_payments"]
        params = {"now": at(10), "limit": 5, "owner": "w", "lease_expires_at": at(20)}
        # With seqscan off the planner still prefers an applicable index, and a partial
        # index whose predicate it cannot prove is never applicable.
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in await sql_backend.execute(
                f"EXPLAIN {query}", params, session=["SET enable_seqscan = off"]
            )
        )
        assert "payments_due" in plan, plan
        assert "Seq Scan on payments" not in plan, plan
        [index] = await sql_backend.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %(schema)s"
            " AND indexname = 'payments_due'",
            {"schema": sql_backend.schema},
        )
        assert "WHERE" in index["indexdef"], index


@pytest.mark.parametrize("sql_backend", ["sqlite"], indirect=True)
async def test_sqlite_file_settings(sql_backend: Backend) -> None:
    await sql_backend.handle()
    assert sql_backend.path is not None and sql_backend.path.exists()  # parents created
    conn = sqlite3.connect(sql_backend.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize(
    "sql_backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgres_tables_live_in_the_schema(sql_backend: Backend) -> None:
    await sql_backend.handle()
    rows = await sql_backend.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %(schema)s"
        " ORDER BY table_name",
        {"schema": sql_backend.schema},
    )
    assert [row["table_name"] for row in rows] == [
        "bindu_schema_version",
        "outbox",
        "payments",
        "push_configs",
        "refund_txs",
        "tasks",
    ]


# Upgrades


def _dialect(backend: Backend) -> str:
    return "sqlite" if backend.name == "sqlite" else "postgres"


async def _create_at_version_1(backend: Backend) -> None:
    """A database exactly as bindu at schema version 1 left it: the real migration code,
    shown only migration 1."""
    storage = backend.make()
    queries = load_queries(_dialect(backend))
    storage._q = dataclasses.replace(queries, migrations=queries.migrations[:1])  # type: ignore[attr-defined]
    await storage.open()
    await storage.close()


async def _insert_v1(backend: Backend, table: str, params: dict[str, Any]) -> None:
    columns = ", ".join(params)
    if backend.name == "sqlite":
        values = ", ".join(f":{name}" for name in params)
    else:
        values = ", ".join(f"%({name})s" for name in params)
    await backend.execute(f"INSERT INTO {table} ({columns}) VALUES ({values})", params)


async def _insert_v1_payment(backend: Backend, record: PaymentRecord) -> None:
    """The row version 1's claim_payment wrote: every column but the refund."""
    if backend.name == "sqlite":
        params = payment_params(
            normalize_payment(record),
            time=sqlite_backend.encode_time,
            json=sqlite_backend.encode_json,
        )
    else:
        params = payment_params(normalize_payment(record), time=utc_opt, json=Jsonb)
    del params["refund"]
    await _insert_v1(backend, "payments", params)


async def _insert_v1_task(
    backend: Backend, task_id: str, state: TaskState = TaskState.FAILED
) -> None:
    task = make_task(task_id, state=state)
    encode = sqlite_backend.encode_json if backend.name == "sqlite" else Jsonb
    now: Any = sqlite_backend.encode_time(at(0)) if backend.name == "sqlite" else at(0)
    await _insert_v1(
        backend,
        "tasks",
        {
            "id": task.id,
            "context_id": task.context_id,
            "state": str(task.state),
            "data": encode(task.wire()),
            "created_at": now,
            "updated_at": now,
        },
    )


async def _versions(backend: Backend) -> list[int]:
    rows = await backend.execute("SELECT version FROM bindu_schema_version ORDER BY version")
    return [row[0] if isinstance(row, tuple) else row["version"] for row in rows]


async def test_upgrade_from_version_1_keeps_data(sql_backend: Backend) -> None:
    await _create_at_version_1(sql_backend)
    assert await _versions(sql_backend) == [1]
    receipt = Receipt("0x" + "aa" * 32, "eip155:84532", "0xpayer", "10000", "0xasset", 9)
    old = [
        due_record("failed", at(1), status=S.FAILED, answers=[{"source": "settle", "n": 1}]),
        due_record("verified", at(2), created_at=at(-5), settle_tx="0xtx", error="timeout"),
        make_record("orphan", status=S.ORPHANED, receipt=receipt, verdict_at=at(3)),
        make_record("done", status=S.COMPLETED, created_at=at(-10)),
    ]
    for record in old:
        await _insert_v1_payment(sql_backend, record)
    await _insert_v1_task(sql_backend, "t1")

    storage = await sql_backend.handle()  # the new code migrates to the latest version
    latest = [m.version for m in load_queries(_dialect(sql_backend)).migrations]
    assert latest[-1] >= 2 and await _versions(sql_backend) == latest
    assert await storage.get_task("t1") == make_task("t1", state=TaskState.FAILED)
    # Tasks from before owners (migration 7) have none: readable by id, listed for nobody.
    upgraded = await storage.get_task("t1")
    assert upgraded is not None and upgraded.owner is None
    assert await storage.list_tasks(owner="key:a") == []
    for record in old:
        got = await storage.get_payment(record.id)
        if record.id == "verified":
            # Migration 3: its task is not queued, so its settle may have been in flight.
            record = record.evolve(status=S.SETTLING)
        assert got == normalize_payment(record), record.id
        assert got is not None and got.refund is None and got.decode_error is None
    assert [r.id for r in await storage.list_payments()] == ["done", "verified", "failed", "orphan"]
    stats = await storage.payment_stats()
    assert stats[S.SETTLING] == StatusStats(1, at(-5)) and stats[S.COMPLETED].count == 1

    # Old records take part in everything new: leasing (the rebuilt index), fulfilling,
    # refunds and push configs.
    due = await storage.claim_due_payments(now=at(10), limit=5, owner="w", lease_seconds=30)
    assert [r.id for r in due] == ["failed", "verified"]
    fulfilling = await storage.transition_payment(
        "failed",
        [S.FAILED],
        PaymentUpdate(status=S.FULFILLING, next_check_at=at(20), release_lease=True),
        now=at(11),
        lease_owner="w",
    )
    assert fulfilling is not None and fulfilling.answers == old[0].answers
    [again] = await storage.claim_due_payments(now=at(20), limit=5, owner="x", lease_seconds=5)
    assert again.id == "failed" and again.status == S.FULFILLING
    refunded = await storage.transition_payment(
        "orphan",
        [S.ORPHANED],
        PaymentUpdate(status=S.REFUNDED, refund=make_refund()),
        now=at(30),
    )
    assert refunded is not None and refunded.refund == make_refund()
    assert refunded.receipt == receipt
    await storage.set_push_config("t1", {"url": "https://x"})
    assert await storage.get_push_config("t1") == {"url": "https://x"}
    await storage.close()

    # And once more: nothing left to migrate, nothing changes.
    reopened = await sql_backend.handle()
    assert await reopened.get_payment("orphan") == refunded
    assert len(await reopened.list_payments()) == len(old)


async def test_upgrade_from_version_2_gives_settles_in_flight_to_the_reconciler(
    sql_backend: Backend,
) -> None:
    # Version 2 as it was left: the real migration code, shown migrations 1 and 2.
    old = sql_backend.make()
    queries = load_queries(_dialect(sql_backend))
    old._q = dataclasses.replace(queries, migrations=queries.migrations[:2])  # type: ignore[attr-defined]
    await old.open()
    await old.close()
    # Rows as version 2 wrote them (raw: today's statements know later columns).
    for task_id, state in [
        ("queued", TaskState.SUBMITTED),
        ("running", TaskState.WORKING),
        ("gave-up", TaskState.FAILED),
    ]:
        await _insert_v1_task(sql_backend, task_id, state)
    rows = [
        make_record("queued", status=S.VERIFIED, task_id="queued", next_check_at=at(50)),
        make_record("running", status=S.VERIFIED, task_id="running", next_check_at=at(50)),
        make_record("gave-up", status=S.VERIFIED, task_id="gave-up"),  # no next check
        make_record("no-task", status=S.VERIFIED, task_id="missing", next_check_at=at(3)),
        due_record("failed", at(1), status=S.FAILED),
        make_record("done", status=S.COMPLETED),
    ]
    for record in rows:
        await _insert_v1_payment(sql_backend, record)
    assert await _versions(sql_backend) == [1, 2]

    storage = await sql_backend.handle()
    assert await _versions(sql_backend) == [m.version for m in queries.migrations]
    got = {r.id: r for r in await storage.list_payments()}
    # A queued payment stays the queue's; one whose task left 'submitted' (or has none)
    # may have been mid-settle: payment-settling, due now at the latest.
    assert got["queued"].status == S.VERIFIED and got["queued"].next_check_at == at(50)
    for moved in ("running", "gave-up", "no-task"):
        assert got[moved].status == S.SETTLING, moved
        check = got[moved].next_check_at
        assert check is not None and check <= datetime.now(UTC), moved
    assert got["no-task"].next_check_at == at(3)  # an earlier check is kept
    assert (got["failed"].status, got["done"].status) == (S.FAILED, S.COMPLETED)
    # The rebuilt index: settling rows are candidates, the queued one never is.
    far = datetime.now(UTC) + timedelta(days=1)
    due = await storage.claim_due_payments(now=far, limit=10, owner="w", lease_seconds=5)
    assert sorted(r.id for r in due) == ["failed", "gave-up", "no-task", "running"]


async def test_sweep_claims_uses_the_status_index(sql_backend: Backend) -> None:
    await sql_backend.handle()
    if sql_backend.name == "sqlite":
        query = load_queries("sqlite")["sweep_claims"]
        plan = "\n".join(
            str(row[-1])
            for row in await sql_backend.execute(
                f"EXPLAIN QUERY PLAN {query}", {"created_before": "x", "limit": 5}
            )
        )
        assert "payments_status_created" in plan, plan
        assert "SCAN payments\n" not in plan + "\n", plan
    else:
        query = load_queries("postgres")["sweep_claims"]
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in await sql_backend.execute(
                f"EXPLAIN {query}",
                {"created_before": at(0), "limit": 5},
                session=["SET enable_seqscan = off"],
            )
        )
        assert "payments_status_created" in plan, plan
        assert "Seq Scan on payments" not in plan, plan


async def test_payment_stats_uses_the_status_index(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    for n in range(5):
        await storage.claim_payment(make_record(f"p{n}", status=S.VERIFIED, created_at=at(n)))
    query = load_queries(_dialect(sql_backend))["payment_stats"]
    if sql_backend.name == "sqlite":
        plan = "\n".join(
            str(row[-1]) for row in await sql_backend.execute(f"EXPLAIN QUERY PLAN {query}")
        )
        # Covering: counts and oldest times come from the index without reading the table.
        assert "USING COVERING INDEX payments_status_created" in plan, plan
    else:
        plan = "\n".join(
            row["QUERY PLAN"]
            for row in await sql_backend.execute(
                f"EXPLAIN {query}", session=["SET enable_seqscan = off"]
            )
        )
        assert "payments_status_created" in plan, plan
        assert "Seq Scan on payments" not in plan, plan


async def test_unknown_status_in_stats_counts_as_failed(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    await storage.claim_payment(make_record("p1", status=S.VERIFIED, created_at=at(1)))
    await storage.claim_payment(make_record("p2", status=S.FAILED, created_at=at(5)))
    await corrupt(sql_backend, "p1", "status")
    stats = await storage.payment_stats()
    assert stats[S.FAILED] == StatusStats(2, at(1)) and stats[S.VERIFIED] == StatusStats(0, None)


async def test_corrupt_push_config_raises(sql_backend: Backend) -> None:
    storage = await sql_backend.handle()
    await storage.set_push_config("t1", {"url": "https://x"})
    if sql_backend.name == "sqlite":
        await sql_backend.execute("UPDATE push_configs SET config = '{oops'")
    else:
        await sql_backend.execute("UPDATE push_configs SET config = '[1]'::jsonb")
    with pytest.raises(StorageError, match="push config of task t1"):
        await storage.get_push_config("t1")


async def test_upgrade_carries_old_refunds_into_the_ledger(sql_backend: Backend) -> None:
    """Refunds recorded before migration 6 (checked by a scan, so one hash may be there
    twice) enter the ledger: the earliest holds the hash, and it refunds nothing new."""
    storage = sql_backend.make()
    queries = load_queries(_dialect(sql_backend))
    storage._q = dataclasses.replace(queries, migrations=queries.migrations[:2])  # type: ignore[attr-defined]
    await storage.open()
    await storage.close()
    tx = "0x" + "ab" * 32
    old = [
        make_record("first", status=S.REFUNDED, refund=make_refund(transaction=tx)),
        make_record(
            "twice",
            status=S.REFUNDED,
            updated_at=at(5),
            refund=make_refund(transaction=tx.upper().replace("0X", "0x")),
        ),
        make_record("orphan", status=S.ORPHANED),
    ]
    encode_time = sqlite_backend.encode_time if sql_backend.name == "sqlite" else utc_opt
    encode_json = sqlite_backend.encode_json if sql_backend.name == "sqlite" else Jsonb
    for record in old:
        params = payment_params(normalize_payment(record), time=encode_time, json=encode_json)
        await _insert_v1(sql_backend, "payments", params)

    upgraded = await sql_backend.handle()
    rows = await sql_backend.execute("SELECT network, tx, payment_id FROM refund_txs")
    assert [tuple(row.values()) if isinstance(row, dict) else tuple(row) for row in rows] == [
        ("eip155:84532", tx, "first")
    ]
    with pytest.raises(RefundTxTaken, match="already the refund of payment first"):
        await upgraded.transition_payment(
            "orphan",
            [S.ORPHANED],
            PaymentUpdate(status=S.REFUNDED, refund=make_refund(transaction=tx)),
            now=at(10),
        )
