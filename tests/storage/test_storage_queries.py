"""The SQL file loader and the shipped SQL files."""

from __future__ import annotations

import re

import pytest

from bindu.errors import StorageError
from bindu.storage.queries import load_queries, parse_queries
from bindu.storage.sqlite import split_statements

TEXT = """\
-- a file comment; ignored
-- name: first
SELECT 1;

-- name: second
-- a comment that belongs to the query
SELECT 2
FROM t;
-- migration: 2
CREATE TABLE b (x int);
-- migration: 1
CREATE TABLE a (x int);
CREATE INDEX a_x ON a (x);
"""


def test_parse_named_blocks_and_ordered_migrations() -> None:
    parsed = parse_queries(TEXT, source="t.sql")
    assert parsed["first"] == "SELECT 1;"
    assert parsed["second"] == "-- a comment that belongs to the query\nSELECT 2\nFROM t;"
    assert [m.version for m in parsed.migrations] == [1, 2]
    assert parsed.migrations[0].sql.endswith("CREATE INDEX a_x ON a (x);")
    with pytest.raises(StorageError, match="no query named 'third'"):
        parsed["third"]


def test_migration_numbers_may_leave_gaps_and_come_in_any_order() -> None:
    # Numbers are assigned to features up front; a later one may land first.
    parsed = parse_queries("-- migration: 6\nSELECT 6;\n-- migration: 1\nSELECT 1;", source="t.sql")
    assert [(m.version, m.sql) for m in parsed.migrations] == [(1, "SELECT 1;"), (6, "SELECT 6;")]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;", "defined twice"),
        ("-- migration: 1\nSELECT 1;\n-- migration: 1\nSELECT 2;", "defined twice"),
        ("-- migration: 0\nSELECT 1;", "numbered from 1"),
        ("-- migration: one\nSELECT 1;", "not a number"),
        ("SELECT 0;\n-- name: a\nSELECT 1;", "before the first"),
        ("-- name: a\n\n-- name: b\nSELECT 1;", "empty"),
    ],
)
def test_parse_rejects_malformed_files(text: str, error: str) -> None:
    with pytest.raises(StorageError, match=error):
        parse_queries(text, source="bad.sql")


def test_shipped_dialects_define_the_same_statements() -> None:
    sqlite, postgres = load_queries("sqlite"), load_queries("postgres")
    versions = [m.version for m in sqlite.migrations]
    assert versions == [m.version for m in postgres.migrations] and versions
    # Postgres has a few extra statements for its schema handling.
    extra = {"set_search_path", "set_utc", "migration_lock", "schema_exists", "create_schema"}
    assert set(postgres.queries) - extra == set(sqlite.queries)
    # Each file uses only its driver's parameter style.
    assert "%(" not in "\n".join(sqlite.queries.values())
    assert not re.search(r"(?<!:):[a-z_]+", "\n".join(postgres.queries.values()))


def test_split_statements_uses_the_sqlite_tokenizer() -> None:
    script = (
        "CREATE TABLE a (x TEXT DEFAULT 'a;b'); -- trailing; comment\n"
        "-- c;\n"
        "CREATE INDEX i ON a (x);\n"
    )
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[0].startswith("CREATE TABLE a") and statements[1].endswith("ON a (x);")
    with pytest.raises(StorageError, match="unterminated"):
        split_statements("CREATE TABLE a (x int)")


def test_every_shipped_migration_splits_cleanly() -> None:
    for migration in load_queries("sqlite").migrations:
        assert split_statements(migration.sql)
