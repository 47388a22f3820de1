"""Postgres storage (psycopg 3 async, with a connection pool), safe for many replicas.

Connections are autocommit; multi-statement work runs in explicit transactions. Every
connection's search_path is the configured schema, so the SQL names tables unqualified.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bindu.a2a import Task, TaskState
from bindu.errors import StorageError
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate, StatusStats
from bindu.storage.codec import (
    check_page,
    checked_push_config,
    decode_payment,
    decode_push_config,
    normalize_payment,
    payment_params,
    status_counts,
    status_stats,
    transition_params,
    utc,
    utc_opt,
)
from bindu.storage.queries import QueryFile, load_queries

Cursor = psycopg.AsyncCursor[DictRow]


def _identity(value: Any) -> Any:
    # psycopg has already turned jsonb into Python values; shape checks happen in codec.
    return value


def _decode_time(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value.astimezone(UTC)


def _decode_payment(row: Mapping[str, Any]) -> PaymentRecord:
    return decode_payment(row, load_json=_identity, load_time=_decode_time)


def _decode_task(row: Mapping[str, Any]) -> Task:
    try:
        return Task.model_validate(row["data"])
    except ValueError as exc:
        raise StorageError(f"stored task is unreadable: {exc}") from exc


def _task_params(task: Task, now: datetime) -> dict[str, Any]:
    return {
        "id": task.id,
        "context_id": task.context_id,
        "state": str(task.state),
        "data": Jsonb(task.wire()),
        "now": utc(now),
    }


def _lock_key(schema: str) -> int:
    """A stable 64-bit advisory-lock key per schema (Python's hash() is salted)."""
    digest = hashlib.blake2b(f"bindu:migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresStorage:
    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        pool_size: int = 10,
        clock: Callable[[], datetime] | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        # The clock stamps created_at/updated_at of tasks; tests inject a deterministic one.
        self._clock = clock or (lambda: datetime.now(UTC))
        self._connect_timeout = connect_timeout
        self._q: QueryFile = load_queries("postgres")
        self._pool: AsyncConnectionPool | None = None

    # Connection and schema

    def _with_schema(self, name: str) -> sql.Composed:
        return sql.SQL(self._q[name]).format(schema=sql.Identifier(self._schema))

    async def _configure(self, conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(self._with_schema("set_search_path"))
        await conn.execute(self._q["set_utc"])

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self._pool_size,
            open=False,
            configure=self._configure,
            # No server-side prepared statements: a replica migrating the schema while
            # this one runs would otherwise break cached "SELECT *" plans, and they do not
            # survive transaction-pooling proxies (PgBouncer) either.
            kwargs={"autocommit": True, "prepare_threshold": None},
            name=f"bindu-{self._schema}",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout)
            self._pool = pool
            await self._migrate()
        except BaseException as exc:
            self._pool = None
            await pool.close()
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"cannot open Postgres storage: {exc}") from exc
            raise

    async def _migrate(self) -> None:
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q["migration_lock"], {"key": _lock_key(self._schema)})
            await cur.execute(self._q["schema_exists"], {"schema": self._schema})
            if await cur.fetchone() is None:
                await cur.execute(self._with_schema("create_schema"))
            await cur.execute(self._q["create_version_table"])
            await cur.execute(self._q["schema_versions"])
            applied = {row["version"] for row in await cur.fetchall()}
            known = {m.version for m in self._q.migrations}
            if applied - known:
                raise StorageError(
                    f"schema {self._schema} has version {max(applied)}, newer than this"
                    f" bindu knows ({max(known, default=0)})"
                )
            for migration in self._q.migrations:
                if migration.version in applied:
                    continue
                # No parameters: psycopg may send the whole multi-statement block at once.
                await cur.execute(migration.sql)
                await cur.execute(
                    self._q["record_schema_version"],
                    {"version": migration.version, "applied_at": utc(self._clock())},
                )
                logger.info("storage: schema {} migrated to {}", self._schema, migration.version)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def _cursor(self, *, transaction: bool) -> AsyncIterator[Cursor]:
        if self._pool is None:
            raise StorageError("PostgresStorage is not open")
        try:
            async with self._pool.connection() as conn:
                if transaction:
                    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                        yield cur
                else:
                    async with conn.cursor(row_factory=dict_row) as cur:
                        yield cur
        except psycopg.Error as exc:
            raise StorageError(f"Postgres: {exc}") from exc

    async def _fetch(self, name: str, params: Mapping[str, Any] | None = None) -> list[DictRow]:
        async with self._cursor(transaction=False) as cur:
            await cur.execute(self._q[name], params)
            # A statement without RETURNING has no result set to fetch.
            return await cur.fetchall() if cur.description is not None else []

    # Tasks

    async def create_task(self, task: Task) -> None:
        if not await self._fetch("insert_task", _task_params(task, self._clock())):
            raise StorageError(f"task {task.id} already exists")

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._fetch("get_task", {"id": task_id})
        return _decode_task(rows[0]) if rows else None

    async def save_task(self, task: Task) -> None:
        if not await self._fetch("update_task", _task_params(task, self._clock())):
            raise StorageError(f"task {task.id} does not exist")

    async def list_tasks(
        self,
        *,
        context_id: str | None = None,
        state: TaskState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        check_page(limit, offset)
        params = {
            "context_id": context_id,
            "state": None if state is None else str(state),
            "limit": limit,
            "offset": offset,
        }
        # Two statements rather than "(context_id IS NULL OR ...)" so each can use its index.
        name = "list_tasks" if context_id is None else "list_tasks_for_context"
        return [_decode_task(row) for row in await self._fetch(name, params)]

    # Payments

    async def claim_payment(self, record: PaymentRecord) -> bool:
        params = payment_params(normalize_payment(record), time=utc_opt, json=Jsonb)
        return bool(await self._fetch("claim_payment", params))

    async def release_claim(self, payment_id: str) -> None:
        await self._fetch("release_claim", {"id": payment_id})

    async def get_payment(self, payment_id: str) -> PaymentRecord | None:
        rows = await self._fetch("get_payment", {"id": payment_id})
        return _decode_payment(rows[0]) if rows else None

    async def get_payment_for_task(self, task_id: str) -> PaymentRecord | None:
        rows = await self._fetch("get_payment_for_task", {"task_id": task_id})
        return _decode_payment(rows[0]) if rows else None

    async def transition_payment(
        self,
        payment_id: str,
        expected: Collection[PaymentStatus],
        update: PaymentUpdate,
        *,
        now: datetime,
        lease_owner: str | None = None,
        task: Task | None = None,
    ) -> PaymentRecord | None:
        params = transition_params(
            payment_id, expected, update, now=now, lease_owner=lease_owner, time=utc_opt, json=Jsonb
        )
        async with self._cursor(transaction=True) as cur:
            await cur.execute(self._q["transition_payment"], params)
            row = await cur.fetchone()
            if row is None:
                return None
            if task is not None:
                await cur.execute(self._q["upsert_task"], _task_params(task, now))
        return _decode_payment(row)

    async def claim_due_payments(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[PaymentRecord]:
        check_page(limit, 0)
        now = utc(now)
        params = {
            "now": now,
            "limit": limit,
            "owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
        }
        rows = await self._fetch("claim_due_payments", params)
        # RETURNING does not promise an order.
        records = [_decode_payment(row) for row in rows]
        return sorted(records, key=lambda r: (r.next_check_at or now, r.id))

    async def list_payments(
        self,
        *,
        statuses: Collection[PaymentStatus] | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[PaymentRecord]:
        check_page(limit, offset)
        params = {
            "statuses": None if statuses is None else [str(s) for s in statuses],
            "created_before": utc_opt(created_before),
            "limit": limit,
            "offset": offset,
        }
        return [_decode_payment(row) for row in await self._fetch("list_payments", params)]

    async def count_payments(self) -> dict[PaymentStatus, int]:
        rows = await self._fetch("count_payments")
        return status_counts([(row["status"], row["n"]) for row in rows])

    async def payment_stats(self) -> dict[PaymentStatus, StatusStats]:
        rows = await self._fetch("payment_stats")
        return status_stats(
            [(row["status"], row["n"], row["oldest"]) for row in rows], load_time=_decode_time
        )

    # Push notification configs

    async def set_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        params = {
            "task_id": task_id,
            "config": Jsonb(checked_push_config(config)),
            "now": utc(self._clock()),
        }
        await self._fetch("set_push_config", params)

    async def get_push_config(self, task_id: str) -> dict[str, Any] | None:
        rows = await self._fetch("get_push_config", {"task_id": task_id})
        if not rows:
            return None
        return decode_push_config(task_id, rows[0]["config"], _identity)
