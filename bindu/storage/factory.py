"""Pick a storage backend from ``STORAGE__URL``."""

from __future__ import annotations

from bindu.settings import StorageSettings
from bindu.storage.base import Storage


def create_storage(settings: StorageSettings) -> Storage:
    """Build (but do not open) the backend named by the URL."""
    url = settings.url
    if url == "memory://":
        from bindu.storage.memory import MemoryStorage

        return MemoryStorage()
    if url.startswith("sqlite:///"):
        from bindu.storage.sqlite import SqliteStorage

        return SqliteStorage(url.removeprefix("sqlite:///"))
    from bindu.storage.postgres import PostgresStorage

    return PostgresStorage(url, schema=settings.schema_name, pool_size=settings.pool_size)


async def open_storage(settings: StorageSettings) -> Storage:
    storage = create_storage(settings)
    await storage.open()
    return storage
