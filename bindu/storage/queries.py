"""Load the named SQL blocks of ``bindu/storage/sql/<dialect>.sql``.

A file is a sequence of blocks, each opened by a header comment line::

    -- name: get_payment
    SELECT * FROM payments WHERE id = :id;

    -- migration: 1
    CREATE TABLE ...;

Keeping SQL in files (and never formatting values into it) means every statement is
reviewable as written and every value travels as a bound parameter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from bindu.errors import StorageError

_HEADER = re.compile(r"^--\s*(name|migration)\s*:\s*(\S+)\s*$")


@dataclass(frozen=True)
class Migration:
    version: int
    sql: str


@dataclass(frozen=True)
class QueryFile:
    source: str
    queries: Mapping[str, str]
    # Ordered by version. Gaps are allowed: numbers are assigned to features up front, so
    # one may land before a lower one; a database applies whichever it lacks, in order.
    migrations: tuple[Migration, ...]

    def __getitem__(self, name: str) -> str:
        try:
            return self.queries[name]
        except KeyError:
            raise StorageError(f"{self.source}: no query named {name!r}") from None


def parse_queries(text: str, *, source: str) -> QueryFile:
    """Split ``text`` into named queries and numbered migrations (see the module doc)."""
    queries: dict[str, str] = {}
    migrations: dict[int, str] = {}
    kind: str | None = None
    key = ""
    body: list[str] = []

    def flush() -> None:
        sql = "\n".join(body).strip()
        if kind is None:
            # Only comments and blank lines may precede the first header.
            if any(line.strip() and not line.lstrip().startswith("--") for line in body):
                raise StorageError(f"{source}: SQL before the first '-- name:' header")
            return
        if not sql:
            raise StorageError(f"{source}: block {key!r} is empty")
        if kind == "name":
            if key in queries:
                raise StorageError(f"{source}: query {key!r} defined twice")
            queries[key] = sql
            return
        if not key.isdigit():
            raise StorageError(f"{source}: migration version {key!r} is not a number")
        version = int(key)
        if version in migrations:
            raise StorageError(f"{source}: migration {version} defined twice")
        migrations[version] = sql

    for line in text.splitlines():
        match = _HEADER.match(line.strip())
        if match is None:
            body.append(line)
            continue
        flush()
        kind, key, body = match.group(1), match.group(2), []
    flush()

    versions = sorted(migrations)
    if versions and versions[0] < 1:
        raise StorageError(f"{source}: migrations are numbered from 1, got {versions}")
    return QueryFile(
        source=source,
        queries=queries,
        migrations=tuple(Migration(v, migrations[v]) for v in versions),
    )


@cache
def load_queries(dialect: str) -> QueryFile:
    """The parsed ``sql/<dialect>.sql`` shipped with the package (read once)."""
    name = f"{dialect}.sql"
    path = resources.files("bindu.storage").joinpath("sql").joinpath(name)
    text = path.read_text(encoding="utf-8")
    return parse_queries(text, source=name)
