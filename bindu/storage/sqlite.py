"""SQLite storage (aiosqlite): one connection per instance, shared safely by processes.

Several processes (server workers, the reconciler, the CLI) may open the same file, so
the connection runs in WAL mode with a busy timeout, and every write is an explicit
``BEGIN IMMEDIATE`` transaction: the write lock is taken up front, which is what makes
compare-and-set and lease claims atomic across processes without SKIP LOCKED.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
from loguru import logger

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

# RETURNING arrived in SQLite 3.35.
_MIN_SQLITE = (3, 35, 0)
_BUSY_TIMEOUT_S = 5.0
_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)

Row = Mapping[str, Any]


def encode_time(value: datetime | None) -> str | None:
    """Fixed-width UTC text: lexical order is time order, which the SQL relies on."""
    if value is None:
        return None
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decode_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"time without zone: {value!r}")
    return parsed.astimezone(UTC)


def encode_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode_json(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError(f"expected JSON text, got {type(value).__name__}")
    return json.loads(value)


def split_statements(script: str) -> list[str]:
    """Statements of a migration, split with SQLite's own tokenizer (so semicolons in
    comments or strings are safe). ``executescript`` is not used because it commits
    the surrounding transaction first."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip() and not all(
        not line.strip() or line.lstrip().startswith("--") for line in pending.splitlines()
    ):
        raise StorageError(f"unterminated SQL statement: {pending.strip()[:60]!r}")
    return statements


def _decode_payment(row: Row) -> PaymentRecord:
    return decode_payment(row, load_json=decode_json, load_time=decode_time)


def _task_params(task: Task, now: datetime) -> dict[str, Any]:
    return {
        "id": task.id,
        "context_id": task.context_id,
        "state": str(task.state),
        "data": encode_json(task.wire()),
        "now": encode_time(now),
    }


def _decode_task(row: Row) -> Task:
    try:
        return Task.model_validate(json.loads(row["data"]))
    except ValueError as exc:
        raise StorageError(f"stored task is unreadable: {exc}") from exc


async def _rollback(conn: aiosqlite.Connection) -> None:
    # SQLite may already have rolled back on its own (e.g. disk full); then there is
    # nothing to undo and the original error is the one worth reporting.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


class SqliteStorage:
    def __init__(self, path: str, *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = path
        # The clock stamps created_at/updated_at of tasks; tests inject a deterministic one.
        self._clock = clock or (lambda: datetime.now(UTC))
        self._q: QueryFile = load_queries("sqlite")
        self._conn: aiosqlite.Connection | None = None
        # One connection, one statement or transaction at a time.
        self._lock = asyncio.Lock()

    # Connection and schema

    async def open(self) -> None:
        if self._conn is not None:
            return
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise StorageError(f"SQLite {sqlite3.sqlite_version} is too old; bindu needs 3.35+")
        if self._path != ":memory:" and not self._path.startswith("file:"):
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
            conn = await aiosqlite.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self._path}: {exc}") from exc
        conn.row_factory = sqlite3.Row
        self._conn = conn
        try:
            for pragma in _PRAGMAS:
                await conn.execute(pragma)
            await self._use_wal(conn)
            await self._migrate()
        except BaseException:
            self._conn = None
            await conn.close()
            raise

    async def _use_wal(self, conn: aiosqlite.Connection) -> None:
        """Switch the file to WAL, so readers never block the writer across processes.

        Converting to WAL needs an exclusive lock and SQLite answers SQLITE_BUSY at once
        there instead of calling the busy handler (seen when several processes open a new
        file together), so retry for as long as busy_timeout would have waited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                rows = await conn.execute_fetchall("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code
                busy = code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not busy or loop.time() + delay > deadline:
                    raise StorageError(f"cannot switch {self._path} to WAL: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        mode = next(iter(rows))[0] if rows else None
        if mode != "wal" and self._path != ":memory:":
            # E.g. a file system without shared memory: still correct, only less concurrent.
            logger.warning("storage: {} stays in journal_mode {}, not WAL", self._path, mode)

    async def _migrate(self) -> None:
        async with self._write() as conn:
            await conn.execute(self._q["create_version_table"])
            applied = {row["version"] for row in await self._fetch(conn, "schema_versions")}
            known = {m.version for m in self._q.migrations}
            if applied - known:
                raise StorageError(
                    f"{self._path} has schema version {max(applied)}, newer than this bindu"
                    f" knows ({max(known, default=0)})"
                )
            for migration in self._q.migrations:
                if migration.version in applied:
                    continue
                for statement in split_statements(migration.sql):
                    await conn.execute(statement)
                await conn.execute(
                    self._q["record_schema_version"],
                    {"version": migration.version, "applied_at": encode_time(self._clock())},
                )
                logger.info("storage: {} migrated to {}", self._path, migration.version)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            async with self._lock:
                await conn.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError("SqliteStorage is not open")
        return self._conn

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            try:
                yield self._connection()
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite: {exc}") from exc

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One IMMEDIATE transaction: the write lock is held from the first statement."""
        async with self._lock:
            conn = self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite: {exc}") from exc
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback(conn)
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"SQLite: {exc}") from exc
                raise

    async def _fetch(
        self, conn: aiosqlite.Connection, name: str, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        rows = await conn.execute_fetchall(self._q[name], params or {})
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]

    # Tasks

    async def create_task(self, task: Task) -> None:
        params = _task_params(task, utc(self._clock()))
        async with self._write() as conn:
            if not await self._fetch(conn, "insert_task", params):
                raise StorageError(f"task {task.id} already exists")

    async def get_task(self, task_id: str) -> Task | None:
        async with self._read() as conn:
            rows = await self._fetch(conn, "get_task", {"id": task_id})
        return _decode_task(rows[0]) if rows else None

    async def save_task(self, task: Task) -> None:
        params = _task_params(task, utc(self._clock()))
        async with self._write() as conn:
            if not await self._fetch(conn, "update_task", params):
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
        # Two statements rather than "(:context_id IS NULL OR ...)" so each can use its index.
        name = "list_tasks" if context_id is None else "list_tasks_for_context"
        async with self._read() as conn:
            rows = await self._fetch(conn, name, params)
        return [_decode_task(row) for row in rows]

    # Payments

    async def claim_payment(self, record: PaymentRecord) -> bool:
        params = payment_params(normalize_payment(record), time=encode_time, json=encode_json)
        async with self._write() as conn:
            return bool(await self._fetch(conn, "claim_payment", params))

    async def release_claim(self, payment_id: str) -> None:
        async with self._write() as conn:
            await conn.execute(self._q["release_claim"], {"id": payment_id})

    async def get_payment(self, payment_id: str) -> PaymentRecord | None:
        async with self._read() as conn:
            rows = await self._fetch(conn, "get_payment", {"id": payment_id})
        return _decode_payment(rows[0]) if rows else None

    async def get_payment_for_task(self, task_id: str) -> PaymentRecord | None:
        async with self._read() as conn:
            rows = await self._fetch(conn, "get_payment_for_task", {"task_id": task_id})
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
            payment_id,
            expected,
            update,
            now=now,
            lease_owner=lease_owner,
            time=encode_time,
            json=encode_json,
        )
        params["expected"] = encode_json(params["expected"])
        async with self._write() as conn:
            rows = await self._fetch(conn, "transition_payment", params)
            if not rows:
                return None
            if task is not None:
                await conn.execute(self._q["upsert_task"], _task_params(task, utc(now)))
        return _decode_payment(rows[0])

    async def claim_due_payments(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[PaymentRecord]:
        check_page(limit, 0)
        now = utc(now)
        params = {
            "now": encode_time(now),
            "limit": limit,
            "owner": owner,
            "lease_expires_at": encode_time(now + timedelta(seconds=lease_seconds)),
        }
        async with self._write() as conn:
            rows = await self._fetch(conn, "claim_due_payments", params)
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
            "statuses": None if statuses is None else encode_json([str(s) for s in statuses]),
            "created_before": encode_time(utc_opt(created_before)),
            "limit": limit,
            "offset": offset,
        }
        async with self._read() as conn:
            rows = await self._fetch(conn, "list_payments", params)
        return [_decode_payment(row) for row in rows]

    async def count_payments(self) -> dict[PaymentStatus, int]:
        async with self._read() as conn:
            rows = await self._fetch(conn, "count_payments")
        return status_counts([(row["status"], row["n"]) for row in rows])

    async def payment_stats(self) -> dict[PaymentStatus, StatusStats]:
        async with self._read() as conn:
            rows = await self._fetch(conn, "payment_stats")
        return status_stats(
            [(row["status"], row["n"], row["oldest"]) for row in rows], load_time=decode_time
        )

    # Push notification configs

    async def set_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        params = {
            "task_id": task_id,
            "config": encode_json(checked_push_config(config)),
            "now": encode_time(self._clock()),
        }
        async with self._write() as conn:
            await conn.execute(self._q["set_push_config"], params)

    async def get_push_config(self, task_id: str) -> dict[str, Any] | None:
        async with self._read() as conn:
            rows = await self._fetch(conn, "get_push_config", {"task_id": task_id})
        if not rows:
            return None
        return decode_push_config(task_id, rows[0]["config"], decode_json)
