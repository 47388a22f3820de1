"""The machine's Postgres (127.0.0.1:5432, trust auth, database ``test``) for tests.

Each user gets a fresh schema, dropped afterwards, so runs never collide. When CI is set,
an unreachable server fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

import psycopg
import pytest
from psycopg import sql

PG_URL = os.environ.get("BINDU_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@cache
def _problem() -> str | None:
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def require_postgres() -> None:
    problem = _problem()
    if problem is None:
        return
    message = f"Postgres at {PG_URL} is unreachable: {problem}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set, so the Postgres tests must run)")
    pytest.skip(message)


@asynccontextmanager
async def fresh_schema(prefix: str = "bindu_test") -> AsyncIterator[str]:
    """A new, empty schema name (created by the storage on open), dropped on exit."""
    require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield schema
    finally:
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
            )
