"""Postgres storage (psycopg 3 async, with a connection pool), safe for many replicas.

Connections are autocommit; multi-statement work runs in explicit transactions. Every
connection's search_path is the configured schema, so the SQL names tables unqualified.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from bindu.errors import StorageError
from bindu.storage.codec import utc_opt
from bindu.storage.sql_backend import Dialect, SqlStorage

Cursor = psycopg.AsyncCursor[DictRow]


def _identity(value: Any) -> Any:
    # psycopg has already turned jsonb into Python values; shape checks happen in codec.
    return value


def _decode_time(value: Any) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return value.astimezone(UTC)


POSTGRES = Dialect(
    name="postgres",
    time=utc_opt,
    json=Jsonb,
    text_list=_identity,  # psycopg adapts a list to text[]
    load_time=_decode_time,
    load_json=_identity,
    load_task=_identity,
)


def _lock_key(schema: str) -> int:
    """A stable 64-bit advisory-lock key per schema (Python's hash() is salted)."""
    digest = hashlib.blake2b(f"bindu:migrate:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresStorage(SqlStorage[Cursor]):
    def __init__(
        self,
        url: str,
        *,
        schema: str = "public",
        pool_size: int = 10,
        clock: Callable[[], datetime] | None = None,
        connect_timeout: float = 30.0,
    ) -> None:
        super().__init__(POSTGRES, clock=clock)
        self._url = url
        self._schema = schema
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
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

    async def _before_migrations(self, tx: Cursor) -> None:
        await tx.execute(self._q["migration_lock"], {"key": _lock_key(self._schema)})
        await tx.execute(self._q["schema_exists"], {"schema": self._schema})
        if await tx.fetchone() is None:
            await tx.execute(self._with_schema("create_schema"))

    async def _run_migration(self, tx: Cursor, script: str) -> None:
        # No parameters: psycopg may send the whole multi-statement block at once.
        await tx.execute(script)

    @property
    def _where(self) -> str:
        return f"schema {self._schema}"

    def _schema_too_new(self, found: int, known: int) -> str:
        return f"schema {self._schema} has version {found}, newer than this bindu knows ({known})"

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

    def _transaction(self) -> AbstractAsyncContextManager[Cursor]:
        return self._cursor(transaction=True)

    async def _one(
        self, name: str, params: Mapping[str, Any] | None = None, *, write: bool = False
    ) -> list[DictRow]:
        # Autocommit: one statement is its own transaction, and its row locks (FOR UPDATE
        # SKIP LOCKED in the lease claim) are all a write needs, so ``write`` changes nothing.
        async with self._cursor(transaction=False) as cur:
            return await self._rows(cur, name, params)

    async def _rows(
        self, tx: Cursor, name: str, params: Mapping[str, Any] | None = None
    ) -> list[DictRow]:
        await tx.execute(self._q[name], params)
        # A statement without RETURNING has no result set to fetch.
        return await tx.fetchall() if tx.description is not None else []
