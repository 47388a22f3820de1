"""In-process storage with the same semantics as the SQL backends (for tests and demos).

Everything stored is a copy and everything returned is a copy, so a caller mutating a
record's ``answers`` list or a task's metadata cannot change stored state behind the
storage's back (the SQL backends get this for free by serialising).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from bindu.a2a import Task
from bindu.errors import RefundTxTaken, StorageError
from bindu.payments.events import OutboxEvent, OutboxItem, OutboxStatus
from bindu.payments.records import (
    OPEN_STATUSES,
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
    StatusStats,
)
from bindu.storage.checked import (
    CheckedStorage,
    DueLease,
    OutboxPage,
    PaymentPage,
    TaskPage,
    Transition,
)
from bindu.storage.codec import (
    clears_next_check,
    normalize_refund,
    status_counts,
    utc,
    utc_opt,
)

_UniqueKey = tuple[str, str, str, str]


@dataclass
class _StoredTask:
    data: dict[str, Any]  # task.wire(), exactly what the SQL backends keep
    context_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    owner: str | None = None  # written at insert, never changed

    def due(self, now: datetime) -> bool:
        """What claim_due_tasks takes (as the SQL backends' WHERE clause)."""
        if self.lease_expires_at is not None and self.lease_expires_at > now:
            return False
        return self.state == "submitted" or (
            self.state == "working" and self.lease_owner is not None
        )


def _unique_key(record: PaymentRecord) -> _UniqueKey:
    return (record.network, record.asset, record.payer, record.nonce)


def _apply(record: PaymentRecord, update: PaymentUpdate, now: datetime) -> PaymentRecord:
    """``update`` applied to ``record``, field by field as the SQL ``transition_payment``."""
    changes: dict[str, Any] = {"updated_at": now}
    if update.status is not None:
        changes["status"] = update.status
    if update.settle_tx is not None:
        changes["settle_tx"] = update.settle_tx
    if update.error is not None:
        changes["error"] = update.error
    elif update.clear_error:
        changes["error"] = None
    if update.answer is not None:
        changes["answers"] = [*record.answers, update.answer]
    if update.attempts is not None:
        changes["attempts"] = update.attempts
    if clears_next_check(update):
        changes["next_check_at"] = None
    elif update.next_check_at is not None:
        changes["next_check_at"] = utc(update.next_check_at)
    if update.receipt is not None:
        changes["receipt"] = update.receipt
    if update.verdict_at is not None:
        changes["verdict_at"] = utc(update.verdict_at)
    if update.refund is not None:
        changes["refund"] = normalize_refund(update.refund)
    if update.release_lease:
        changes["lease_owner"] = None
        changes["lease_expires_at"] = None
    elif update.lease_to is not None:
        changes["lease_owner"] = update.lease_to
        changes["lease_expires_at"] = utc_opt(update.lease_until)
    return record.evolve(**changes)


class MemoryStorage(CheckedStorage):
    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(clock=clock)
        self._lock = asyncio.Lock()
        self._tasks: dict[str, _StoredTask] = {}
        self._payments: dict[str, PaymentRecord] = {}
        self._by_key: dict[_UniqueKey, str] = {}
        self._push_configs: dict[str, dict[str, Any]] = {}
        self._outbox: dict[int, OutboxItem] = {}  # by seq, in write order
        self._outbox_keys: set[str] = set()
        # The refund ledger: (network, refund tx) -> the payment it refunded.
        self._refund_txs: dict[tuple[str, str], str] = {}

    async def open(self) -> None:
        """Nothing to connect to; re-opening keeps the data, like the SQL backends."""

    async def close(self) -> None:
        """Keeps the data: a closed MemoryStorage can be opened again."""

    # Tasks

    def _put_task(self, task: Task, now: datetime, *, existing: _StoredTask | None) -> None:
        # As in SQL: created_at and the owner are those of the first insert; a lease, if
        # any, is kept.
        self._tasks[task.id] = _StoredTask(
            data=task.wire(),
            context_id=task.context_id,
            state=str(task.state),
            created_at=existing.created_at if existing else now,
            updated_at=now,
            lease_owner=existing.lease_owner if existing else None,
            lease_expires_at=existing.lease_expires_at if existing else None,
            owner=existing.owner if existing else task.owner,
        )

    @staticmethod
    def _load_task(stored: _StoredTask) -> Task:
        task = Task.model_validate(copy.deepcopy(stored.data))
        task.owner = stored.owner
        return task

    async def _insert_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        async with self._lock:
            if task.id in self._tasks:
                raise StorageError(f"task {task.id} already exists")
            self._put_task(task, now, existing=None)
            self._add_events(events, now)

    async def get_task(self, task_id: str) -> Task | None:
        async with self._lock:
            stored = self._tasks.get(task_id)
            return None if stored is None else self._load_task(stored)

    async def _update_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        async with self._lock:
            stored = self._tasks.get(task.id)
            if stored is None:
                raise StorageError(f"task {task.id} does not exist")
            self._put_task(task, now, existing=stored)
            self._add_events(events, now)

    async def _list_tasks(self, page: TaskPage) -> list[Task]:
        async with self._lock:
            rows = sorted(
                (
                    (t.created_at, task_id, t)
                    for task_id, t in self._tasks.items()
                    if (page.owner is None or t.owner == page.owner)
                    and (page.context_id is None or t.context_id == page.context_id)
                    and (page.state is None or t.state == page.state)
                ),
                key=lambda row: (row[0], row[1]),
            )
            chosen = rows[page.offset : page.offset + page.limit]
            return [self._load_task(t) for _, _, t in chosen]

    # The task queue

    async def _lease_tasks(self, lease: DueLease) -> list[Task]:
        async with self._lock:
            due = sorted(
                (
                    (t.created_at, task_id, t)
                    for task_id, t in self._tasks.items()
                    if t.due(lease.now)
                ),
                key=lambda row: (row[0], row[1]),
            )[: lease.limit]
            for _, _, stored in due:
                stored.lease_owner = lease.owner
                stored.lease_expires_at = lease.expires_at
            return [self._load_task(t) for _, _, t in due]

    async def _renew_task_lease(self, task_id: str, owner: str, expires_at: datetime) -> bool:
        async with self._lock:
            stored = self._tasks.get(task_id)
            if stored is None or stored.lease_owner != owner:
                return False
            if stored.state not in ("submitted", "working"):
                return False
            stored.lease_expires_at = expires_at
            return True

    async def release_task_lease(self, task_id: str, *, owner: str) -> bool:
        async with self._lock:
            stored = self._tasks.get(task_id)
            if stored is None or stored.lease_owner != owner:
                return False
            stored.lease_owner = None
            stored.lease_expires_at = None
            return True

    async def _transition_task(
        self,
        task: Task,
        expected: list[str],
        lease_owner: str | None,
        now: datetime,
        events: tuple[OutboxEvent, ...],
    ) -> bool:
        async with self._lock:
            stored = self._tasks.get(task.id)
            if stored is None or stored.state not in expected:
                return False
            if lease_owner is not None and stored.lease_owner != lease_owner:
                return False
            self._put_task(task, now, existing=stored)
            self._add_events(events, now)
            return True

    async def count_queued(self) -> int:
        async with self._lock:
            return sum(1 for t in self._tasks.values() if t.state == "submitted")

    # Payments

    async def _insert_payment(self, record: PaymentRecord) -> bool:
        stored = copy.deepcopy(record)
        async with self._lock:
            if stored.id in self._payments:
                raise StorageError(f"payment {stored.id} already exists")
            key = _unique_key(stored)
            if key in self._by_key:
                return False
            self._payments[stored.id] = stored
            self._by_key[key] = stored.id
            return True

    async def release_claim(self, payment_id: str) -> None:
        async with self._lock:
            record = self._payments.get(payment_id)
            if record is None or record.status != PaymentStatus.CLAIMED:
                return
            del self._payments[payment_id]
            del self._by_key[_unique_key(record)]

    async def get_payment(self, payment_id: str) -> PaymentRecord | None:
        async with self._lock:
            return copy.deepcopy(self._payments.get(payment_id))

    async def get_payment_for_task(self, task_id: str) -> PaymentRecord | None:
        async with self._lock:
            records = [r for r in self._payments.values() if r.task_id == task_id]
            if not records:
                return None
            return copy.deepcopy(max(records, key=lambda r: (r.created_at, r.id)))

    async def _transition(self, t: Transition) -> PaymentRecord | None:
        now = utc(t.now)
        update = copy.deepcopy(t.update)
        normalize_refund(update.refund)  # a naive time is refused before anything changes
        async with self._lock:
            record = self._payments.get(t.payment_id)
            if record is None or record.status not in t.expected:
                return None
            if t.lease_owner is not None and record.lease_owner != t.lease_owner:
                return None
            refund_key = None
            if update.refund is not None:
                refund_key = (record.network, update.refund.transaction.lower())
                if refund_key in self._refund_txs:
                    raise RefundTxTaken(*refund_key, self._refund_txs[refund_key])
            updated = _apply(record, update, now)
            if refund_key is not None:
                self._refund_txs[refund_key] = t.payment_id
            self._payments[t.payment_id] = updated
            if t.task is not None:
                self._put_task(t.task, now, existing=self._tasks.get(t.task.id))
            self._add_events(t.events, now)
            return copy.deepcopy(updated)

    async def _lease_due(self, lease: DueLease) -> list[PaymentRecord]:
        now = lease.now
        async with self._lock:
            due = sorted(
                (
                    r
                    for r in self._payments.values()
                    if r.status in OPEN_STATUSES
                    and r.next_check_at is not None
                    and r.next_check_at <= now
                    and (r.lease_expires_at is None or r.lease_expires_at <= now)
                ),
                key=lambda r: (r.next_check_at or now, r.id),
            )[: lease.limit]
            leased = [
                r.evolve(lease_owner=lease.owner, lease_expires_at=lease.expires_at) for r in due
            ]
            for record in leased:
                self._payments[record.id] = record
            return copy.deepcopy(leased)

    async def _sweep_claims(self, created_before: datetime, limit: int) -> list[str]:
        async with self._lock:
            stale = sorted(
                (
                    r
                    for r in self._payments.values()
                    if r.status is PaymentStatus.CLAIMED and r.created_at < created_before
                ),
                key=lambda r: (r.created_at, r.id),
            )[:limit]
            for record in stale:
                del self._payments[record.id]
                del self._by_key[_unique_key(record)]
            return sorted(r.id for r in stale)

    async def _list_payments(self, page: PaymentPage) -> list[PaymentRecord]:
        before = page.created_before
        wanted = None if page.statuses is None else set(page.statuses)
        async with self._lock:
            rows = sorted(
                (
                    r
                    for r in self._payments.values()
                    if (wanted is None or str(r.status) in wanted)
                    and (before is None or r.created_at < before)
                ),
                key=lambda r: (r.created_at, r.id),
            )
            return copy.deepcopy(rows[page.offset : page.offset + page.limit])

    async def count_payments(self) -> dict[PaymentStatus, int]:
        async with self._lock:
            statuses = [str(r.status) for r in self._payments.values()]
        return status_counts([(status, 1) for status in statuses])

    async def payment_stats(self) -> dict[PaymentStatus, StatusStats]:
        async with self._lock:
            records = list(self._payments.values())
        counts = status_counts([(str(r.status), 1) for r in records])
        oldest: dict[PaymentStatus, datetime | None] = dict.fromkeys(PaymentStatus)
        for record in records:
            current = oldest[record.status]
            if current is None or record.created_at < current:
                oldest[record.status] = record.created_at
        return {status: StatusStats(counts[status], oldest[status]) for status in PaymentStatus}

    # Push notification configs

    async def _put_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        async with self._lock:
            self._push_configs[task_id] = config

    async def get_push_config(self, task_id: str) -> dict[str, Any] | None:
        async with self._lock:
            stored = self._push_configs.get(task_id)
            return None if stored is None else copy.deepcopy(stored)

    # The outbox

    def _add_events(self, events: tuple[OutboxEvent, ...], now: datetime) -> None:
        """Called with the lock held, after the write that carries the events won."""
        for event in events:
            if event.key in self._outbox_keys:
                continue
            if event.kind == "push" and event.task_id not in self._push_configs:
                continue  # nobody to tell
            seq = len(self._outbox) + 1
            self._outbox[seq] = OutboxItem(
                seq=seq,
                kind=event.kind,
                key=event.key,
                stream=event.stream,
                task_id=event.task_id,
                body=copy.deepcopy(event.body),
                status=OutboxStatus.PENDING,
                attempts=0,
                error=None,
                created_at=now,
                next_attempt_at=now,
            )
            self._outbox_keys.add(event.key)

    async def _lease_outbox(self, lease: DueLease) -> list[OutboxItem]:
        now = lease.now
        async with self._lock:
            heads: dict[str, OutboxItem] = {}
            for item in self._outbox.values():  # seq order: the first pending is the head
                if item.status is OutboxStatus.PENDING:
                    heads.setdefault(item.stream, item)
            due = sorted(
                (
                    i
                    for i in heads.values()
                    if i.next_attempt_at <= now
                    and (i.lease_expires_at is None or i.lease_expires_at <= now)
                ),
                key=lambda i: (i.next_attempt_at, i.seq),
            )[: lease.limit]
            leased = [
                replace(i, lease_owner=lease.owner, lease_expires_at=lease.expires_at) for i in due
            ]
            for item in leased:
                self._outbox[item.seq] = item
            return copy.deepcopy(leased)

    def _leased(self, seq: int, owner: str) -> OutboxItem | None:
        item = self._outbox.get(seq)
        if item is None or item.status is not OutboxStatus.PENDING:
            return None
        return item if item.lease_owner == owner else None

    async def _finish_outbox(
        self, seq: int, owner: str, now: datetime, status: OutboxStatus, error: str | None
    ) -> bool:
        async with self._lock:
            item = self._leased(seq, owner)
            if item is None:
                return False
            self._outbox[seq] = replace(
                item,
                status=status,
                error=error,
                attempts=item.attempts + 1,
                finished_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            return True

    async def _retry_outbox(
        self, seq: int, owner: str, next_attempt_at: datetime, error: str | None, attempted: bool
    ) -> bool:
        async with self._lock:
            item = self._leased(seq, owner)
            if item is None:
                return False
            self._outbox[seq] = replace(
                item,
                error=error,
                attempts=item.attempts + (1 if attempted else 0),
                next_attempt_at=next_attempt_at,
                lease_owner=None,
                lease_expires_at=None,
            )
            return True

    async def _list_outbox(self, page: OutboxPage) -> list[OutboxItem]:
        async with self._lock:
            rows = [
                i
                for i in self._outbox.values()
                if (page.task_id is None or i.task_id == page.task_id)
                and (page.status is None or i.status == page.status)
            ]
            return copy.deepcopy(rows[page.offset : page.offset + page.limit])
