"""A paid server's history, generated inside the database (INSERT ... SELECT over a
number series) so a million rows load in seconds, not minutes of Python row building.

Rows are shaped like the ones bindu writes: one task per index (the A2A document with the
user message, the agent's reply and the artifact for delivered work, and the
``x402.payment.*`` metadata) and one payment record per task (the full signed x402 v2
PaymentPayload with its own nonce, the requirements, the settle answer, the receipt).
Index ``i`` is created at ``base + i`` seconds. Statuses:

* ``mode="history"``: exactly 100 payment-failed records due now, at i = 0, 9, ..., 891
  (older than the newest 100 tasks at every size), a few final verdicts of each other kind
  (orphaned, void, unresolved), the rest payment-completed;
* ``mode="all_due"``: every record payment-failed and due (the reconciler's backlog).

The payload's signature is the real one of the template payment; with the nonce varied it
no longer verifies, which only a facilitator would notice (the benchmarks' are fake).
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql

from bench.common import AMOUNT, ASSET, NETWORK, PAY_TO, SETTLE_TIMEOUT_ERROR

Mode = Literal["history", "all_due"]
DUE_IN_HISTORY = 100

_TASK_DOC = (
    '{"kind":"task","id":"{id}","contextId":"{ctx}","status":{"state":"{state}",'
    '"timestamp":"{ts}"},"history":[{"kind":"message","role":"user","parts":[{"kind":'
    '"text","text":"summarise ticket #{i} for the weekly report"}],"messageId":"{msg}",'
    '"taskId":"{id}","contextId":"{ctx}"}{reply}],"artifacts":[{artifact}],'
    '"metadata":{"x402.payment.status":"{status}"{meta}}}'
)
_REPLY = (
    ',{"kind":"message","role":"agent","parts":[{"kind":"text","text":"echo: summarise ticket'
    ' #{i} for the weekly report"}],"messageId":"{msg}","taskId":"{id}",'
    '"contextId":"{ctx}"}'
)
_ARTIFACT = (
    '{"artifactId":"{msg}","name":"result","parts":[{"kind":"text","text":"echo: '
    'summarise ticket #{i} for the weekly report"}]}'
)
_RECEIPT = (
    '{"transaction":"{tx}","network":"'
    + NETWORK
    + '","payer":"{payer}","amount":"'
    + AMOUNT
    + '","asset":"'
    + ASSET
    + '"}'
)
_SETTLED_ANSWER = (
    '[{"source":"settle","at":"{ts}","success":true,"transaction":"{tx}","network":"'
    + NETWORK
    + '","payer":"{payer}"}]'
)
_FAILED_ANSWER = '[{"source":"settle","at":"{ts}","error":"' + SETTLE_TIMEOUT_ERROR + '"}]'
_PLACEHOLDER = re.compile(r"\{(id|ctx|state|ts|i|msg|reply|artifact|status|meta|tx|payer|nonce)\}")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _concat(template: str, exprs: dict[str, str]) -> str:
    """An SQL text expression: the template's literal parts as SQL literals, each
    ``{name}`` as the SQL expression ``exprs[name]``."""
    out: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > pos:
            out.append(_lit(template[pos : match.start()]))
        out.append(f"({exprs[match.group(1)]})")
        pos = match.end()
    if pos < len(template):
        out.append(_lit(template[pos:]))
    return " || ".join(out)


class Dialect:
    name = ""

    def uuid(self) -> str:
        raise NotImplementedError

    def hex32(self) -> str:
        raise NotImplementedError

    def ts_text(self, offset: str) -> str:
        raise NotImplementedError

    def ts(self, offset: str) -> str:
        raise NotImplementedError

    def payer(self) -> str:
        raise NotImplementedError

    def mod(self, a: str, n: int) -> str:
        raise NotImplementedError

    def series(self) -> str:
        raise NotImplementedError

    def json(self, expr: str) -> str:
        return expr

    def at_column(self) -> str:
        raise NotImplementedError


class SqliteDialect(Dialect):
    name = "sqlite"

    def uuid(self) -> str:
        return (
            "printf('%08x-%04x-4%03x-a%03x-%012x', random() & 4294967295, random() & 65535,"
            " random() & 4095, random() & 4095, random() & 281474976710655)"
        )

    def hex32(self) -> str:
        return "printf('0x%016x%016x%016x%016x', random(), random(), random(), random())"

    def ts_text(self, offset: str) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:%S', :base + {offset}, 'unixepoch')||'.000000Z'"

    def ts(self, offset: str) -> str:
        return self.ts_text(offset)

    def at_column(self) -> str:
        return "ts"

    def mod(self, a: str, n: int) -> str:
        return f"({a} % {n})"

    def payer(self) -> str:
        return "printf('0x%040x', 4096 + i % 1000)"

    def series(self) -> str:
        return (
            "WITH RECURSIVE seq(i) AS (SELECT :start UNION ALL SELECT i + 1 FROM seq"
            " WHERE i + 1 < :stop)"
        )


class PostgresDialect(Dialect):
    name = "postgres"

    def uuid(self) -> str:
        return "gen_random_uuid()::text"

    def hex32(self) -> str:
        return "'0x'||md5(random()::text)||md5(random()::text)"

    def ts_text(self, offset: str) -> str:
        return (
            f"to_char(to_timestamp(%(base)s + {offset}) AT TIME ZONE 'UTC',"
            ' \'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\')'
        )

    def ts(self, offset: str) -> str:
        return f"to_timestamp(%(base)s + {offset})"

    def at_column(self) -> str:
        return "at"

    def mod(self, a: str, n: int) -> str:
        # psycopg reads a bare percent sign as a placeholder
        return f"mod({a}, {n})"

    def payer(self) -> str:
        return "'0x'||lpad(to_hex(4096 + mod(i, 1000)), 40, '0')"

    def series(self) -> str:
        return "WITH seq AS (SELECT generate_series(%(start)s, %(stop)s - 1) AS i)"

    def json(self, expr: str) -> str:
        return f"({expr})::jsonb"


def _status_case(d: Dialect, mode: Mode) -> str:
    if mode == "all_due":
        return "'payment-failed'"
    return (
        f"CASE WHEN i < 900 AND {d.mod('i', 9)} = 0 THEN 'payment-failed'"
        f" WHEN {d.mod('i', 200)} = 7 THEN 'payment-orphaned'"
        f" WHEN {d.mod('i', 211)} = 7 THEN 'payment-void'"
        f" WHEN {d.mod('i', 503)} = 7 THEN 'payment-unresolved'"
        " ELSE 'payment-completed' END"
    )


def _payload_template(payload: dict[str, Any]) -> str:
    nonce_probe = "0x" + "ab" * 32
    payer_probe = "0x" + "cd" * 20
    doc = json.loads(json.dumps(payload))
    doc["payload"]["authorization"].update(nonce=nonce_probe)
    doc["payload"]["authorization"].update({"from": payer_probe})
    text = json.dumps(doc, separators=(",", ":"))
    return text.replace(nonce_probe, "{nonce}").replace(payer_probe, "{payer}")


def statements(d: Dialect, mode: Mode, payload: dict[str, Any], requirements: dict[str, Any]):
    """(generate, tasks insert, payments insert) statements for dialect ``d``."""
    gen = (
        f"{d.series()} SELECT i, {d.uuid()} AS id, {d.uuid()} AS ctx, {d.uuid()} AS msg,"
        f" {d.uuid()} AS pay_id, {d.hex32()} AS tx, {d.hex32()} AS nonce,"
        f" {d.payer()} AS payer, {_status_case(d, mode)} AS status,"
        f" {d.ts_text('i')} AS ts"
        + ("" if d.at_column() == "ts" else f", {d.ts('i')} AS at")
        + " FROM seq"
    )
    at = d.at_column()
    delivered = "status = 'payment-completed'"
    settled = "status IN ('payment-completed', 'payment-orphaned')"
    exprs = {
        "id": "id",
        "ctx": "ctx",
        "msg": "msg",
        "ts": "ts",
        "i": "CAST(i AS TEXT)",
        "status": "status",
        "tx": "tx",
        "payer": "payer",
        "nonce": "nonce",
        "state": f"CASE WHEN {delivered} THEN 'completed' ELSE 'failed' END",
    }
    exprs["reply"] = f"CASE WHEN {delivered} THEN {_concat(_REPLY, exprs)} ELSE '' END"
    exprs["artifact"] = f"CASE WHEN {delivered} THEN {_concat(_ARTIFACT, exprs)} ELSE '' END"
    receipt = _concat(_RECEIPT, exprs)
    exprs["meta"] = (
        "CASE WHEN status = 'payment-failed' THEN "
        + _lit(',"x402.payment.error":"' + SETTLE_TIMEOUT_ERROR + '"')
        + f" WHEN {settled} THEN "
        + _lit(',"x402.payment.receipts":[')
        + f" || {receipt} || ']'"
        + " ELSE "
        + _lit(',"x402.payment.error":"authorization expired unused"')
        + " END"
    )
    tasks = (
        "INSERT INTO tasks (id, context_id, state, data, created_at, updated_at)"
        f" SELECT id, ctx, {exprs['state']}, {d.json(_concat(_TASK_DOC, exprs))}, {at}, {at}"
        " FROM gen"
    )
    open_ = "status = 'payment-failed'"
    valid_before = int(payload["payload"]["authorization"]["validBefore"])
    payments = (
        "INSERT INTO payments (id, task_id, status, network, asset, pay_to, payer, amount,"
        " nonce, valid_after, valid_before, payload, requirements, created_at, updated_at,"
        " settle_tx, error, answers, attempts, next_check_at, lease_owner, lease_expires_at,"
        " receipt, verdict_at)"
        f" SELECT pay_id, id, status, {_lit(NETWORK)}, {_lit(ASSET)}, {_lit(PAY_TO)}, payer,"
        f" {_lit(AMOUNT)}, nonce, 0, {valid_before},"
        f" {d.json(_concat(_payload_template(payload), exprs))},"
        f" {d.json(_lit(json.dumps(requirements, separators=(',', ':'))))}, {at}, {at},"
        f" CASE WHEN {settled} THEN tx END,"
        f" CASE WHEN {open_} THEN {_lit(SETTLE_TIMEOUT_ERROR)}"
        f" WHEN {settled} THEN NULL ELSE 'authorization expired unused' END,"
        f" {d.json(f'CASE WHEN {open_} THEN {_concat(_FAILED_ANSWER, exprs)} ELSE {_concat(_SETTLED_ANSWER, exprs)} END')},"  # noqa: E501
        f" CASE WHEN {open_} OR status = 'payment-completed' THEN 0 ELSE 3 END,"
        f" CASE WHEN {open_} THEN {d.ts('i + 1')} END, NULL, NULL,"
        f" {d.json(f'CASE WHEN {settled} THEN {receipt} END')},"
        f" CASE WHEN {open_} THEN NULL ELSE {at} END"
        " FROM gen"
    )
    return gen, tasks, payments


@dataclass
class Loaded:
    """What the benchmarks need back: the due records and their tasks' documents."""

    due_payment_ids: list[str] = field(default_factory=list)
    due_task_ids: list[str] = field(default_factory=list)
    due_task_docs: dict[str, Any] = field(default_factory=dict)


def sqlite_history(
    path: str,
    start: int,
    stop: int,
    *,
    base: datetime,
    payload: dict[str, Any],
    requirements: dict[str, Any],
    mode: Mode = "history",
) -> Loaded:
    """Generate rows [start, stop) into the SQLite file (the storage must be closed).

    Secondary indexes are dropped for the load and rebuilt from their own stored SQL in
    the same transaction (the primary key and unique constraints stay)."""
    gen, tasks, payments = statements(SqliteDialect(), mode, payload, requirements)
    params = {"start": start, "stop": stop, "base": int(base.timestamp())}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # A rollback journal while loading: a WAL would hold the whole load a second time.
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1048576")
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("BEGIN")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            " AND tbl_name IN ('tasks', 'payments')"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute("DROP TABLE IF EXISTS temp.gen")
        conn.execute(f"CREATE TEMP TABLE gen AS {gen}", params)
        conn.execute(tasks)
        conn.execute(payments, {"base": params["base"]})
        conn.execute("DROP TABLE temp.gen")
        for _, create in indexes:
            conn.execute(create)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")
        return _sqlite_due(conn)
    finally:
        conn.close()


def _sqlite_due(conn: sqlite3.Connection) -> Loaded:
    out = Loaded()
    rows = conn.execute(
        "SELECT p.id, p.task_id, t.data FROM payments p JOIN tasks t ON t.id = p.task_id"
        " WHERE p.status = 'payment-failed' ORDER BY p.created_at"
    ).fetchall()
    for pid, tid, data in rows:
        out.due_payment_ids.append(pid)
        out.due_task_ids.append(tid)
        out.due_task_docs[tid] = data
    return out


def _pg_connect(url: str, schema: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def pg_drop_indexes(url: str, schema: str) -> list[str]:
    """Drop the secondary (non-constraint) indexes of tasks and payments for a bulk load;
    their definitions, to rebuild them with ``pg_finish``."""
    with _pg_connect(url, schema) as conn:
        rows = conn.execute(
            "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)"
            " FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = %s AND t.relname IN ('tasks', 'payments')"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
            (schema,),
        ).fetchall()
        for name, _ in rows:
            conn.execute(f"DROP INDEX {name}")
    return [definition for _, definition in rows]


def pg_history(
    url: str,
    schema: str,
    start: int,
    stop: int,
    *,
    base: datetime,
    payload: dict[str, Any],
    requirements: dict[str, Any],
    mode: Mode = "history",
    chunk: int = 250_000,
) -> None:
    """Generate rows [start, stop) into the storage's tables in ``schema`` (several
    ranges may load at once on separate connections)."""
    gen, tasks, payments = statements(PostgresDialect(), mode, payload, requirements)
    with _pg_connect(url, schema) as conn:
        for lo in range(start, stop, chunk):
            params = {"start": lo, "stop": min(stop, lo + chunk), "base": int(base.timestamp())}
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE gen ON COMMIT DROP AS " + gen, params)
                conn.execute(tasks)
                conn.execute(payments, {"base": params["base"]})


def pg_finish(url: str, schema: str, indexes: list[str]) -> Loaded:
    """Rebuild the dropped indexes, ANALYZE (as autovacuum would after a bulk load), and
    read back the due records."""
    with _pg_connect(url, schema) as conn:
        conn.execute("SET maintenance_work_mem = '512MB'")
        for definition in indexes:
            conn.execute(definition)
        conn.execute("ANALYZE tasks")
        conn.execute("ANALYZE payments")
        out = Loaded()
        rows = conn.execute(
            "SELECT p.id, p.task_id, t.data::text FROM payments p JOIN tasks t"
            " ON t.id = p.task_id WHERE p.status = 'payment-failed' ORDER BY p.created_at"
        ).fetchall()
        for pid, tid, data in rows:
            out.due_payment_ids.append(pid)
            out.due_task_ids.append(tid)
            out.due_task_docs[tid] = data
        return out
