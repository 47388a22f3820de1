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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bindu.a2a import Task, TaskState
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.storage.codec import check_page, checked_push_config, normalize_payment, utc, utc_opt


@dataclass(frozen=True)
class TaskPage:
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


class CheckedStorage(ABC):
    def __init__(self, *, clock: Callable[[], datetime] | None) -> None:
        # The clock stamps created_at/updated_at of tasks; tests inject a deterministic one.
        self._clock = clock or (lambda: datetime.now(UTC))

    # Tasks

    async def create_task(self, task: Task) -> None:
        await self._insert_task(task, utc(self._clock()))

    async def save_task(self, task: Task) -> None:
        await self._update_task(task, utc(self._clock()))

    async def list_tasks(
        self,
        *,
        context_id: str | None = None,
        state: TaskState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        check_page(limit, offset)
        state_value = None if state is None else str(state)
        return await self._list_tasks(TaskPage(context_id, state_value, limit, offset))

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
    ) -> PaymentRecord | None:
        return await self._transition(
            Transition(payment_id, expected, update, now, lease_owner, task)
        )

    async def claim_due_payments(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[PaymentRecord]:
        check_page(limit, 0)
        now = utc(now)
        expires_at = now + timedelta(seconds=lease_seconds)
        return await self._lease_due(DueLease(now, limit, owner, expires_at))

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

    # What a backend implements

    @abstractmethod
    async def _insert_task(self, task: Task, now: datetime) -> None:
        """Raise StorageError if the id exists."""

    @abstractmethod
    async def _update_task(self, task: Task, now: datetime) -> None:
        """Raise StorageError unless the task exists; created_at is kept."""

    @abstractmethod
    async def _list_tasks(self, page: TaskPage) -> list[Task]: ...

    @abstractmethod
    async def _insert_payment(self, record: PaymentRecord) -> bool:
        """``record`` is normalised; False if its unique key is taken."""

    @abstractmethod
    async def _transition(self, t: Transition) -> PaymentRecord | None: ...

    @abstractmethod
    async def _lease_due(self, lease: DueLease) -> list[PaymentRecord]: ...

    @abstractmethod
    async def _list_payments(self, page: PaymentPage) -> list[PaymentRecord]: ...

    @abstractmethod
    async def _put_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        """``config`` is a fresh copy of plain JSON, the caller's no longer."""
