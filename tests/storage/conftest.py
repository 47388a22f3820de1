"""Fixtures running the storage conformance suite against every backend.

``backend`` is parametrized over memory, SQLite (a file under tmp_path) and Postgres (a
fresh ``bindu_test_<hex>`` schema per test, dropped afterwards). ``sql_backend`` covers
only the SQL backends, for tests that need raw SQL (corrupt rows, EXPLAIN, migrations).

Postgres is expected at 127.0.0.1:5432 (override with BINDU_TEST_POSTGRES_URL). When it
is unreachable the Postgres cases are skipped locally, but fail when CI is set.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from bindu.storage.base import Storage
from bindu.storage.memory import MemoryStorage
from bindu.storage.postgres import PostgresStorage
from bindu.storage.sqlite import SqliteStorage
from tests.support.postgres import PG_URL, require_postgres

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """Each call is one second later (``tick`` = 0 freezes it), so created_at order is
    deterministic without sleeping."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start
        self.tick = timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += self.tick
        return self.now


@dataclass
class Backend:
    """One store under test; ``handle()`` opens another storage object on the same data
    (a second connection/pool, as another process or replica would have)."""

    name: str
    clock: FakeClock
    make: Callable[[], Storage]
    path: Path | None = None  # sqlite
    schema: str | None = None  # postgres
    opened: list[Storage] = field(default_factory=list)

    async def handle(self) -> Storage:
        storage = self.make()
        self.opened.append(storage)
        await storage.open()
        return storage

    async def execute(
        self,
        statement: str,
        params: Mapping[str, Any] | None = None,
        *,
        session: Sequence[str] = (),
    ) -> list[Any]:
        """Raw SQL on a separate connection (tests only: to corrupt rows, EXPLAIN, ...),
        after the ``session`` statements (e.g. planner settings)."""
        if self.path is not None:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                for setup in session:
                    db.execute(setup)
                return db.execute(statement, params or {}).fetchall()
            finally:
                db.close()
        assert self.schema is not None
        async with await psycopg.AsyncConnection.connect(
            PG_URL, autocommit=True, row_factory=dict_row
        ) as conn:
            await conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            for setup in session:
                await conn.execute(setup)
            cur = await conn.execute(statement, params)
            return await cur.fetchall() if cur.description else []

    async def close_all(self) -> None:
        for storage in self.opened:
            await storage.close()


async def _backend(name: str, tmp_path: Path) -> AsyncIterator[Backend]:
    clock = FakeClock()
    if name == "memory":
        shared = MemoryStorage(clock=clock)
        # Memory has no second connection: every handle is the one shared store.
        backend = Backend(name, clock, lambda: shared)
    elif name == "sqlite":
        # A nested path: the backend must create the parent directories.
        path = tmp_path / "data" / "nested" / "bindu.db"
        backend = Backend(name, clock, lambda: SqliteStorage(str(path), clock=clock), path=path)
    else:
        require_postgres()
        schema = f"bindu_test_{uuid.uuid4().hex}"
        backend = Backend(
            name,
            clock,
            lambda: PostgresStorage(
                PG_URL, schema=schema, pool_size=4, clock=clock, connect_timeout=10
            ),
            schema=schema,
        )
    try:
        yield backend
    finally:
        await backend.close_all()
        if backend.schema is not None:
            async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
                await conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(backend.schema)
                    )
                )


ALL = ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
SQL = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=ALL)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for value in _backend(request.param, tmp_path):
        yield value


@pytest.fixture(params=SQL)
async def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for value in _backend(request.param, tmp_path):
        yield value


@pytest.fixture
async def storage(backend: Backend) -> Storage:
    return await backend.handle()
