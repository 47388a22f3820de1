"""Hostile-input helpers shared by the explicit tests and the fuzz run."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LONE_SURROGATE = "\ud800"

# A valid request of every method; hostile variants are derived from these.
TASK_ID = "00000000-0000-4000-8000-000000000000"
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "message/send": {
        "message": {
            "kind": "message",
            "role": "user",
            "messageId": "m-1",
            "contextId": "c-1",
            "parts": [
                {"kind": "text", "text": "hello", "metadata": {"k": "v"}},
                {"kind": "data", "data": {"key": "value", "list": ["a", "b"]}},
            ],
            "metadata": {"note": "n"},
        },
        "configuration": {
            "blocking": True,
            "historyLength": 1,
            "acceptedOutputModes": ["text/plain"],
            "pushNotificationConfig": {
                "id": "p-1",
                "url": "https://example.com/hook",
                "token": "t",
                "authentication": {"schemes": ["Bearer"], "credentials": "secret"},
            },
        },
        "metadata": {"trace": "x"},
    },
    "tasks/get": {"id": TASK_ID, "historyLength": 2},
    "tasks/list": {"contextId": "c-1", "state": "completed", "pageSize": 10, "pageToken": "0"},
    "tasks/cancel": {"id": TASK_ID},
    "tasks/pushNotificationConfig/set": {
        "taskId": TASK_ID,
        "pushNotificationConfig": {"url": "https://example.com/hook", "token": "t"},
    },
    "tasks/pushNotificationConfig/get": {"id": TASK_ID},
}


def request(method: str, params: Any, request_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}


def string_positions(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths of every string in ``value``; a trailing ``None`` marks a dict key."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key, None)
            yield from string_positions(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from string_positions(item, (*path, index))


def with_string_replaced(doc: Any, path: tuple[Any, ...], new: str) -> Any:
    """A copy of ``doc`` with the string (or dict key) at ``path`` replaced by ``new``."""
    if path and path[-1] is None:  # a key
        *parents, key, _ = path
        return _edit(
            doc, tuple(parents), lambda d: {(new if k == key else k): v for k, v in d.items()}
        )
    return _edit(doc, path, lambda _: new)


def _edit(doc: Any, path: tuple[Any, ...], change: Any) -> Any:
    if not path:
        return change(doc)
    head, *rest = path
    if isinstance(doc, dict):
        return {k: (_edit(v, tuple(rest), change) if k == head else v) for k, v in doc.items()}
    return [(_edit(v, tuple(rest), change) if i == head else v) for i, v in enumerate(doc)]


def row_counts(db: Path) -> dict[str, int]:
    """Rows in each of bindu's tables, read from the server's SQLite file."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                " AND name != 'bindu_schema_version'"
            )
        ]
        return {
            name: conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names
        }
