"""Pluggable storage: one protocol, backends for memory, SQLite and Postgres."""

from bindu.storage.base import Storage
from bindu.storage.factory import open_storage

__all__ = ["Storage", "open_storage"]
