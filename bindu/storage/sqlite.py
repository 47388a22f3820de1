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
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite
from loguru import logger

from bindu.errors import StorageError
from bindu.storage.codec import utc
from bindu.storage.sql_backend import Dialect, Row, SqlStorage

# RETURNING arrived in SQLite 3.35.
_MIN_SQLITE = (3, 35, 0)
_BUSY_TIMEOUT_S = 5.0
_PRAGMAS = (
    "PRAGMA busy_timeout = 5000",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA foreign_keys = ON",
)


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


async def _rollback(conn: aiosqlite.Connection) -> None:
    # SQLite may already have rolled back on its own (e.g. disk full); then there is
    # nothing to undo and the original error is the one worth reporting.
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            await conn.execute("ROLLBACK")


SQLITE = Dialect(
    name="sqlite",
    time=encode_time,
    json=encode_json,
    text_list=encode_json,  # unpacked in SQL with json_each
    load_time=decode_time,
    load_json=decode_json,
    load_task=json.loads,
)


class SqliteStorage(SqlStorage[aiosqlite.Connection]):
    def __init__(self, path: str, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(SQLITE, clock=clock)
        self._path = path
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

    @property
    def _where(self) -> str:
        return self._path

    def _schema_too_new(self, found: int, known: int) -> str:
        return f"{self._path} has schema version {found}, newer than this bindu knows ({known})"

    async def _run_migration(self, tx: aiosqlite.Connection, script: str) -> None:
        for statement in split_statements(script):
            await tx.execute(statement)

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
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
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

    async def _one(
        self, name: str, params: Mapping[str, Any] | None = None, *, write: bool = False
    ) -> list[Row]:
        # A write takes the write lock up front (BEGIN IMMEDIATE, see the module doc);
        # a read needs no transaction of its own.
        async with self._transaction() if write else self._read() as conn:
            return await self._rows(conn, name, params)

    async def _rows(
        self, tx: aiosqlite.Connection, name: str, params: Mapping[str, Any] | None = None
    ) -> list[Row]:
        rows = await tx.execute_fetchall(self._q[name], params or {})
        return [dict(zip(row.keys(), row, strict=True)) for row in rows]
