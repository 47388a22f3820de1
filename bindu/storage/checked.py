"""The Storage protocol's methods that take arguments worth checking, written once.

Every backend must refuse the same things in the same words (a negative page, a naive
time, a push config that is not plain JSON) and store the same normalised values. So the
public signatures, their defaults and that checking live here; a backend implements the
narrower hooks below, which receive the arguments already checked, in one small value.
Methods with nothing to check (the getters, release_claim, counts, open/close) are each
backend's own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bindu.a2a import Task, TaskState
from bindu.errors import IllegalTransition, StorageError
from bindu.metrics import ILLEGAL_TRANSITIONS
from bindu.payments.events import OutboxEvent, OutboxItem, OutboxStatus
from bindu.payments.lifecycle import refused
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.storage.codec import check_page, checked_push_config, normalize_payment, utc, utc_opt


@dataclass(frozen=True)
class TaskPage:
    owner: str | None  # None: every owner's tasks (operators), never a caller's listing
    context_id: str | None
    state: str | None  # the TaskState's value
    limit: int
    offset: int


@dataclass(frozen=True)
class PaymentPage:
    statuses: list[str] | None  # the PaymentStatus values; None for all
    created_before: datetime | None  # UTC
    limit: int
    offset: int


@dataclass(frozen=True)
class DueLease:
    now: datetime  # UTC
    limit: int
    owner: str
    expires_at: datetime  # UTC


@dataclass(frozen=True)
class Transition:
    """transition_payment's arguments as given: the backends check its times at different
    moments (the SQL ones all of them while encoding, before any statement; memory ``now``
    and the refund first, the update's other times only once the compare-and-set matched)."""

    payment_id: str
    expected: Collection[PaymentStatus]
    update: PaymentUpdate
    now: datetime
    lease_owner: str | None
    task: Task | None
    events: tuple[OutboxEvent, ...] = ()


@dataclass(frozen=True)
class OutboxPage:
    task_id: str | None
    status: str | None
    limit: int
    offset: int


def _short(error: str | None) -> str | None:
    # A receiver's error text is theirs: keep enough to diagnose, never unbounded.
    return None if error is None else error[:500]


def checked_events(events: Sequence[OutboxEvent]) -> tuple[OutboxEvent, ...]:
    """Events as every backend stores them: known kinds, a key, a JSON body (checked and
    copied now, before any statement); a key given twice keeps its first event."""
    kept: dict[str, OutboxEvent] = {}
    for event in events:
        if event.kind not in ("push", "webhook"):
            raise StorageError(f"unknown outbox event kind {event.kind!r}")
        if not event.key:
            raise StorageError("an outbox event needs a key")
        if event.kind == "push" and not event.task_id:
            raise StorageError(f"push event {event.key} names no task")
        body = checked_push_config(event.body)  # the same rule: a plain JSON object
        kept.setdefault(event.key, OutboxEvent(event.kind, event.key, event.task_id, body))
    return tuple(kept.values())


class CheckedStorage(ABC):
    def __init__(self, *, clock: Callable[[], datetime] | None) -> None:
        # The clock stamps created_at/updated_at of tasks; tests inject a deterministic one.
        self._clock = clock or (lambda: datetime.now(UTC))
        self._watchers: list[Callable[[], None]] = []

    def watch_events(self, callback: Callable[[], None]) -> None:
        self._watchers.append(callback)

    def _events_written(self, events: Sequence[OutboxEvent]) -> None:
        if events:
            for watcher in self._watchers:
                watcher()

    # Tasks

    async def create_task(self, task: Task, *, events: Sequence[OutboxEvent] = ()) -> None:
        await self._insert_task(task, utc(self._clock()), checked_events(events))
        self._events_written(events)

    async def save_task(self, task: Task, *, events: Sequence[OutboxEvent] = ()) -> None:
        await self._update_task(task, utc(self._clock()), checked_events(events))
        self._events_written(events)

    async def list_tasks(
        self,
        *,
        owner: str | None = None,
        context_id: str | None = None,
        state: TaskState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        check_page(limit, offset)
        state_value = None if state is None else str(state)
        return await self._list_tasks(TaskPage(owner, context_id, state_value, limit, offset))

    # The task queue

    async def claim_due_tasks(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[Task]:
        check_page(limit, 0)
        now = utc(now)
        return await self._lease_tasks(
            DueLease(now, limit, owner, now + timedelta(seconds=lease_seconds))
        )

    async def renew_task_lease(
        self, task_id: str, *, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        expires_at = utc(now) + timedelta(seconds=lease_seconds)
        return await self._renew_task_lease(task_id, owner, expires_at)

    async def transition_task(
        self,
        task: Task,
        *,
        expected: Collection[TaskState],
        lease_owner: str | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        states = sorted(str(s) for s in expected)
        checked = checked_events(events)
        won = await self._transition_task(task, states, lease_owner, utc(self._clock()), checked)
        if won:
            self._events_written(events)
        return won

    # Payments

    async def claim_payment(self, record: PaymentRecord) -> bool:
        return await self._insert_payment(normalize_payment(record))

    async def transition_payment(
        self,
        payment_id: str,
        expected: Collection[PaymentStatus],
        update: PaymentUpdate,
        *,
        now: datetime,
        lease_owner: str | None = None,
        task: Task | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> PaymentRecord | None:
        # The lifecycle table, checked before the backend is touched: an illegal edge is a
        # bug (or a writer with a stale picture), never something to store.
        bad = refused(expected, update.status)
        if bad:
            for source, target in bad:
                ILLEGAL_TRANSITIONS.labels(source.value, _name(target)).inc()
            pairs = ", ".join(f"{s.value} -> {_name(t)}" for s, t in bad)
            raise IllegalTransition(f"payment {payment_id}: illegal transition {pairs}")
        return await self._transition(
            Transition(payment_id, expected, update, now, lease_owner, task, checked_events(events))
        )

    async def claim_due_payments(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[PaymentRecord]:
        check_page(limit, 0)
        now = utc(now)
        expires_at = now + timedelta(seconds=lease_seconds)
        return await self._lease_due(DueLease(now, limit, owner, expires_at))

    async def sweep_claims(self, *, created_before: datetime, limit: int) -> list[str]:
        check_page(limit, 0)
        return await self._sweep_claims(utc(created_before), limit)

    async def list_payments(
        self,
        *,
        statuses: Collection[PaymentStatus] | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[PaymentRecord]:
        check_page(limit, offset)
        names = None if statuses is None else [str(s) for s in statuses]
        return await self._list_payments(PaymentPage(names, utc_opt(created_before), limit, offset))

    # Push notification configs

    async def set_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        await self._put_push_config(task_id, checked_push_config(config))

    # The outbox

    async def claim_outbox(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[OutboxItem]:
        check_page(limit, 0)
        now = utc(now)
        expires_at = now + timedelta(seconds=lease_seconds)
        return await self._lease_outbox(DueLease(now, limit, owner, expires_at))

    async def finish_outbox(
        self, seq: int, *, owner: str, now: datetime, status: OutboxStatus, error: str | None
    ) -> bool:
        if status is OutboxStatus.PENDING:
            raise StorageError("finish_outbox needs a final status")
        return await self._finish_outbox(seq, owner, utc(now), status, _short(error))

    async def retry_outbox(
        self,
        seq: int,
        *,
        owner: str,
        next_attempt_at: datetime,
        error: str | None,
        attempted: bool = True,
    ) -> bool:
        return await self._retry_outbox(seq, owner, utc(next_attempt_at), _short(error), attempted)

    async def list_outbox(
        self,
        *,
        task_id: str | None = None,
        status: OutboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[OutboxItem]:
        check_page(limit, offset)
        wanted = None if status is None else str(status)
        return await self._list_outbox(OutboxPage(task_id, wanted, limit, offset))

    # What a backend implements

    @abstractmethod
    async def _insert_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        """Raise StorageError if the id exists (and keep no event)."""

    @abstractmethod
    async def _update_task(
        self, task: Task, now: datetime, events: tuple[OutboxEvent, ...]
    ) -> None:
        """Raise StorageError unless the task exists; created_at is kept."""

    @abstractmethod
    async def _list_tasks(self, page: TaskPage) -> list[Task]: ...

    @abstractmethod
    async def _lease_tasks(self, lease: DueLease) -> list[Task]:
        """Oldest first (created_at, then id)."""

    @abstractmethod
    async def _renew_task_lease(self, task_id: str, owner: str, expires_at: datetime) -> bool: ...

    @abstractmethod
    async def _transition_task(
        self,
        task: Task,
        expected: list[str],
        lease_owner: str | None,
        now: datetime,
        events: tuple[OutboxEvent, ...],
    ) -> bool:
        """``expected`` holds TaskState values; ``events`` are kept only when it won."""

    @abstractmethod
    async def _insert_payment(self, record: PaymentRecord) -> bool:
        """``record`` is normalised; False if its unique key is taken."""

    @abstractmethod
    async def _transition(self, t: Transition) -> PaymentRecord | None: ...

    @abstractmethod
    async def _lease_due(self, lease: DueLease) -> list[PaymentRecord]: ...

    @abstractmethod
    async def _sweep_claims(self, created_before: datetime, limit: int) -> list[str]: ...

    @abstractmethod
    async def _list_payments(self, page: PaymentPage) -> list[PaymentRecord]: ...

    @abstractmethod
    async def _put_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        """``config`` is a fresh copy of plain JSON, the caller's no longer."""

    @abstractmethod
    async def _lease_outbox(self, lease: DueLease) -> list[OutboxItem]: ...

    @abstractmethod
    async def _finish_outbox(
        self, seq: int, owner: str, now: datetime, status: OutboxStatus, error: str | None
    ) -> bool: ...

    @abstractmethod
    async def _retry_outbox(
        self, seq: int, owner: str, next_attempt_at: datetime, error: str | None, attempted: bool
    ) -> bool: ...

    @abstractmethod
    async def _list_outbox(self, page: OutboxPage) -> list[OutboxItem]: ...


def _name(status: PaymentStatus | None) -> str:
    return "(same)" if status is None else status.value
