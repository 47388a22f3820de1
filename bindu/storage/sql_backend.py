"""Every Storage method of the SQL backends, written once over a few primitives.

SQLite and Postgres run the same named statements (from ``sql/<dialect>.sql``) with the
same parameters; they differ in how a column holds a time or JSON (``Dialect``), in how a
statement or a transaction gets a connection, and in what must happen around the
migrations. A backend supplies those as the abstract methods at the bottom.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from loguru import logger

from bindu.a2a import Task
from bindu.errors import RefundTxTaken, StorageError
from bindu.payments.events import OutboxEvent, OutboxItem, OutboxStatus
from bindu.payments.records import PaymentRecord, PaymentStatus, StatusStats
from bindu.storage.checked import (
    CheckedStorage,
    DueLease,
    OutboxPage,
    PaymentPage,
    TaskPage,
    Transition,
)
from bindu.storage.codec import (
    JsonDecoder,
    JsonEncoder,
    TimeDecoder,
    TimeEncoder,
    decode_outbox,
    decode_payment,
    decode_push_config,
    payment_params,
    status_counts,
    status_stats,
    transition_params,
)
from bindu.storage.queries import QueryFile, load_queries

Row = Mapping[str, Any]
# What a transaction hands its statements: a connection (SQLite) or a cursor (Postgres).
Handle = TypeVar("Handle")


@dataclass(frozen=True)
class Dialect:
    """How one SQL dialect's columns and parameters hold values."""

    name: str  # of the query file, sql/<name>.sql
    time: TimeEncoder
    json: JsonEncoder
    text_list: Callable[[list[str]], Any]  # a list parameter (e.g. of statuses)
    load_time: TimeDecoder
    load_json: JsonDecoder
    load_task: JsonDecoder  # the tasks.data column


class SqlStorage(CheckedStorage, Generic[Handle]):
    def __init__(self, dialect: Dialect, *, clock: Callable[[], datetime] | None) -> None:
        super().__init__(clock=clock)
        self._dialect = dialect
        # Looked up at each use, so a test can swap in fewer migrations before open().
        self._q: QueryFile = load_queries(dialect.name)

    # Schema

    async def _migrate(self) -> None:
        """Apply the migrations this database lacks, all in one write transaction: openers
        racing on a fresh database take turns, and a failed migration leaves no trace."""
        async with self._transaction() as tx:
            await self._before_migrations(tx)
            await self._rows(tx, "create_version_table")
            applied = {row["version"] for row in await self._rows(tx, "schema_versions")}
            known = {m.version for m in self._q.migrations}
            if applied - known:
                raise StorageError(self._schema_too_new(max(applied), max(known, default=0)))
            for migration in self._q.migrations:
                if migration.version in applied:
                    continue
                await self._run_migration(tx, migration.sql)
                params = {"version": migration.version, "applied_at": self._time(self._clock())}
                await self._rows(tx, "record_schema_version", params)
                logger.info("storage: {} migrated to {}", self._where, migration.version)

    # Values

    def _time(self, value: datetime | None) -> Any:
        return self._dialect.time(value)

    def _task_params(self, task: Task, now: datetime) -> dict[str, Any]:
        return {
            "id": task.id,
            "context_id": task.context_id,
            "state": str(task.state),
            "data": self._dialect.json(task.wire()),
            "now": self._time(now),
            "owner": task.owner,  # used by the inserts only: an owner is never changed
        }

    def _decode_task(self, row: Row) -> Task:
        try:
            task = Task.model_validate(self._dialect.load_task(row["data"]))
        except ValueError as exc:
            raise StorageError(f"stored task is unreadable: {exc}") from exc
        task.owner = row["owner"]
        return task

    def _decode_payment(self, row: Row) -> PaymentRecord:
        d = self._dialect
        return decode_payment(row, load_json=d.load_json, load_time=d.load_time)

    # Tasks

    async def _insert_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        if not await self._write_task("insert_task", task, now, events):
            raise StorageError(f"task {task.id} already exists")

    async def _update_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        if not await self._write_task("update_task", task, now, events):
            raise StorageError(f"task {task.id} does not exist")

    async def _write_task(
        self, statement: str, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> bool:
        return await self._write_task_params(statement, self._task_params(task, now), now, events)

    async def _write_task_params(
        self,
        statement: str,
        params: dict[str, Any],
        now: datetime,
        events: tuple[OutboxEvent, ...],
    ) -> bool:
        """Run a task write; its events join it in one transaction when it matched a row."""
        if not events:
            return bool(await self._one(statement, params, write=True))
        async with self._transaction() as tx:
            if not await self._rows(tx, statement, params):
                return False
            await self._insert_events(tx, events, now)
        return True

    async def _insert_events(
        self, tx: Handle, events: tuple[OutboxEvent, ...], now: datetime
    ) -> None:
        """After the write that carries them (so a task's events take seqs in the order
        its writers commit: the task or payment row lock is already held)."""
        for event in events:
            params = {
                "key": event.key,
                "kind": event.kind,
                "stream": event.stream,
                "task_id": event.task_id,
                "body": self._dialect.json(event.body),
                "now": self._time(now),
            }
            await self._rows(tx, "insert_outbox_event", params)

    async def get_task(self, task_id: str) -> Task | None:
        rows = await self._one("get_task", {"id": task_id})
        return self._decode_task(rows[0]) if rows else None

    async def _list_tasks(self, page: TaskPage) -> list[Task]:
        params = {
            "owner": page.owner,
            "context_id": page.context_id,
            "state": page.state,
            "limit": page.limit,
            "offset": page.offset,
        }
        # Separate statements rather than "(context_id IS NULL OR ...)" so each can use its
        # index.
        name = "list_tasks" if page.owner is None else "list_owner_tasks"
        if page.context_id is not None:
            name += "_for_context"
        return [self._decode_task(row) for row in await self._one(name, params)]

    # The task queue

    async def _lease_tasks(self, lease: DueLease) -> list[Task]:
        params = {
            "now": self._time(lease.now),
            "limit": lease.limit,
            "owner": lease.owner,
            "lease_expires_at": self._time(lease.expires_at),
        }
        rows = await self._one("claim_due_tasks", params, write=True)
        # RETURNING does not promise an order.
        ordered = sorted(
            rows, key=lambda row: (self._dialect.load_time(row["created_at"]), row["id"])
        )
        return [self._decode_task(row) for row in ordered]

    async def _renew_task_lease(self, task_id: str, owner: str, expires_at: datetime) -> bool:
        params = {"id": task_id, "owner": owner, "lease_expires_at": self._time(expires_at)}
        return bool(await self._one("renew_task_lease", params, write=True))

    async def release_task_lease(self, task_id: str, *, owner: str) -> bool:
        return bool(
            await self._one("release_task_lease", {"id": task_id, "owner": owner}, write=True)
        )

    async def _transition_task(
        self,
        task: Task,
        expected: list[str],
        lease_owner: str | None,
        now: datetime,
        events: tuple[OutboxEvent, ...],
    ) -> bool:
        params = self._task_params(task, now)
        params["expected"] = self._dialect.text_list(expected)
        params["lease_owner"] = lease_owner
        return await self._write_task_params("transition_task", params, now, events)

    async def count_queued(self) -> int:
        rows = await self._one("count_queued")
        return int(rows[0]["n"])

    # Payments

    async def _insert_payment(self, record: PaymentRecord) -> bool:
        params = payment_params(record, time=self._dialect.time, json=self._dialect.json)
        return bool(await self._one("claim_payment", params, write=True))

    async def release_claim(self, payment_id: str) -> None:
        await self._one("release_claim", {"id": payment_id}, write=True)

    async def get_payment(self, payment_id: str) -> PaymentRecord | None:
        rows = await self._one("get_payment", {"id": payment_id})
        return self._decode_payment(rows[0]) if rows else None

    async def get_payment_for_task(self, task_id: str) -> PaymentRecord | None:
        rows = await self._one("get_payment_for_task", {"task_id": task_id})
        return self._decode_payment(rows[0]) if rows else None

    async def _transition(self, t: Transition) -> PaymentRecord | None:
        d = self._dialect
        params = transition_params(
            t.payment_id,
            t.expected,
            t.update,
            now=t.now,
            lease_owner=t.lease_owner,
            time=d.time,
            json=d.json,
        )
        params["expected"] = d.text_list(params["expected"])
        # One transaction: the task is saved only if the compare-and-set won.
        async with self._transaction() as tx:
            rows = await self._rows(tx, "transition_payment", params)
            if not rows:
                return None
            if t.update.refund is not None:
                await self._book_refund(tx, rows[0], t)
            if t.task is not None:
                await self._rows(tx, "upsert_task", self._task_params(t.task, t.now))
            await self._insert_events(tx, t.events, t.now)
        return self._decode_payment(rows[0])

    async def _book_refund(self, tx: Handle, row: Row, t: Transition) -> None:
        """The refund ledger's row, or RefundTxTaken, which rolls the transition back."""
        assert t.update.refund is not None
        key = {"network": row["network"], "tx": t.update.refund.transaction.lower()}
        params = {**key, "payment_id": t.payment_id, "now": self._time(t.now)}
        if await self._rows(tx, "record_refund_tx", params):
            return
        holder = await self._rows(tx, "refund_tx_holder", key)
        raise RefundTxTaken(key["network"], key["tx"], holder[0]["payment_id"] if holder else "?")

    async def _lease_due(self, lease: DueLease) -> list[PaymentRecord]:
        params = {
            "now": self._time(lease.now),
            "limit": lease.limit,
            "owner": lease.owner,
            "lease_expires_at": self._time(lease.expires_at),
        }
        rows = await self._one("claim_due_payments", params, write=True)
        # RETURNING does not promise an order.
        records = [self._decode_payment(row) for row in rows]
        return sorted(records, key=lambda r: (r.next_check_at or lease.now, r.id))

    async def _sweep_claims(self, created_before: datetime, limit: int) -> list[str]:
        params = {"created_before": self._time(created_before), "limit": limit}
        rows = await self._one("sweep_claims", params, write=True)
        return sorted(str(row["id"]) for row in rows)

    async def _list_payments(self, page: PaymentPage) -> list[PaymentRecord]:
        statuses = page.statuses
        params = {
            "statuses": None if statuses is None else self._dialect.text_list(statuses),
            "created_before": self._time(page.created_before),
            "limit": page.limit,
            "offset": page.offset,
        }
        return [self._decode_payment(row) for row in await self._one("list_payments", params)]

    async def count_payments(self) -> dict[PaymentStatus, int]:
        rows = await self._one("count_payments")
        return status_counts([(row["status"], row["n"]) for row in rows])

    async def payment_stats(self) -> dict[PaymentStatus, StatusStats]:
        rows = await self._one("payment_stats")
        return status_stats(
            [(row["status"], row["n"], row["oldest"]) for row in rows],
            load_time=self._dialect.load_time,
        )

    # Push notification configs

    async def _put_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        params = {
            "task_id": task_id,
            "config": self._dialect.json(config),
            "now": self._time(self._clock()),
        }
        await self._one("set_push_config", params, write=True)

    async def get_push_config(self, task_id: str) -> dict[str, Any] | None:
        rows = await self._one("get_push_config", {"task_id": task_id})
        if not rows:
            return None
        return decode_push_config(task_id, rows[0]["config"], self._dialect.load_json)

    # The outbox

    def _decode_outbox(self, row: Row) -> OutboxItem:
        d = self._dialect
        return decode_outbox(row, load_json=d.load_json, load_time=d.load_time)

    async def _lease_outbox(self, lease: DueLease) -> list[OutboxItem]:
        params = {
            "now": self._time(lease.now),
            "limit": lease.limit,
            "owner": lease.owner,
            "lease_expires_at": self._time(lease.expires_at),
        }
        rows = await self._one("claim_outbox", params, write=True)
        items = [self._decode_outbox(row) for row in rows]
        return sorted(items, key=lambda i: (i.next_attempt_at, i.seq))

    async def _finish_outbox(
        self, seq: int, owner: str, now: datetime, status: OutboxStatus, error: str | None
    ) -> bool:
        params = {
            "seq": seq,
            "owner": owner,
            "now": self._time(now),
            "status": str(status),
            "error": error,
        }
        return bool(await self._one("finish_outbox", params, write=True))

    async def _retry_outbox(
        self, seq: int, owner: str, next_attempt_at: datetime, error: str | None, attempted: bool
    ) -> bool:
        params = {
            "seq": seq,
            "owner": owner,
            "next_attempt_at": self._time(next_attempt_at),
            "error": error,
            "counted": 1 if attempted else 0,
        }
        return bool(await self._one("retry_outbox", params, write=True))

    async def _list_outbox(self, page: OutboxPage) -> list[OutboxItem]:
        params = {
            "task_id": page.task_id,
            "status": page.status,
            "limit": page.limit,
            "offset": page.offset,
        }
        return [self._decode_outbox(row) for row in await self._one("list_outbox", params)]

    # What a backend implements

    @abstractmethod
    async def _one(
        self, name: str, params: Mapping[str, Any] | None = None, *, write: bool = False
    ) -> Sequence[Row]:
        """Run the named statement on its own and return its rows (none without RETURNING).
        ``write`` says it may change data, for a backend that must lock for that."""

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[Handle]:
        """One write transaction: committed if the block ends, rolled back if it raises."""

    @abstractmethod
    async def _rows(
        self, tx: Handle, name: str, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row]:
        """Run the named statement inside ``tx`` and return its rows."""

    @abstractmethod
    async def _run_migration(self, tx: Handle, script: str) -> None:
        """Run one migration block (several statements) inside ``tx``."""

    async def _before_migrations(self, tx: Handle) -> None:
        """Whatever must precede the version table (nothing, unless a backend says so)."""

    @property
    @abstractmethod
    def _where(self) -> str:
        """The database's name in log lines: a file, a schema."""

    @abstractmethod
    def _schema_too_new(self, found: int, known: int) -> str:
        """The error when the database is at a newer version than this code knows."""
