"""Conformance cases that need raw SQL, run against SQLite and Postgres: corrupt rows are
flagged (not raised), migrations are idempotent and race-free, and the reconciler's
candidate query uses the partial index."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

from bindu.errors import StorageError
from bindu.payments.records import PaymentStatus, PaymentUpdate
from bindu.storage.queries import load_queries

from .conftest import Backend
from .test_storage_conformance import at, due_record, make_record, make_task

S = PaymentStatus

# column -> (SQLite raw value, Postgres raw SQL expression, expected decode_error fragment)
CORRUPTIONS: dict[str, tuple[str, str, str]] = {
    "payload": ("{not json", "'\"not an object\"'::jsonb", "payload"),
    "requirements": ("[1, 2", "'[1, 2]'::jsonb", "requirements"),
    "answers": ("oops", "'{\"a\": 1}'::jsonb", "answers"),
    "receipt": ('{"network": "x"}', '\'{"network": "x"}\'::jsonb', "receipt: missing"),
    "status": ("payment-bogus", "'payment-bogus'", "status: unknown"),
}


async def corrupt(backend: Backend, payment_id: str, column: str) -> None:
    sqlite_value, postgres_expr, _ = CORRUPTIONS[column]
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
    good = due_record("p1", at(0), answers=[{"n": 1}], task_id="t1")
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
        "status": S.FAILED if column == "status" else S.VERIFIED,
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
    await storage.claim_payment(make_record("p1", status=S.VERIFIED, answers=[{"n": 1}]))
    await corrupt(sql_backend, "p1", "answers")
    got = await storage.transition_payment(
        "p1",
        [S.VERIFIED],
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
    assert [row["table_name"] for row in rows] == ["bindu_schema_version", "payments", "tasks"]
