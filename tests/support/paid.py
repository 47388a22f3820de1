"""Helpers for tests that follow one paid request through real server processes: the
storage a server used (SQLite file or a fresh Postgres schema), read directly afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bindu.payments.records import PaymentRecord
from bindu.settings import StorageSettings
from bindu.storage.base import Storage
from bindu.storage.factory import open_storage
from tests.support.postgres import PG_URL, fresh_schema


@asynccontextmanager
async def storage_env(kind: str, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """STORAGE__* variables for a server on SQLite (a file) or Postgres (a fresh schema)."""
    if kind == "sqlite":
        yield {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db"}
        return
    async with fresh_schema() as schema:
        yield {"STORAGE__URL": PG_URL, "STORAGE__SCHEMA": schema}


@asynccontextmanager
async def reading(env: dict[str, str]) -> AsyncIterator[Storage]:
    """The servers' storage, opened by the test itself (another process's view)."""
    settings = StorageSettings(
        url=env["STORAGE__URL"], schema=env.get("STORAGE__SCHEMA", "public"), pool_size=2
    )
    storage = await open_storage(settings)
    try:
        yield storage
    finally:
        await storage.close()


async def payment_of(storage: Storage, payer: str) -> PaymentRecord | None:
    """The one payment record of ``payer`` (fresh per test), if any."""
    found = [r for r in await storage.list_payments(limit=1000) if r.payer == payer.lower()]
    assert len(found) <= 1, found
    return found[0] if found else None
