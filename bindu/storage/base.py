"""The storage protocol every backend implements (and the shared conformance suite tests).

Tasks are stored as whole A2A documents. Payment records have their own table in SQL
backends, unique on (network, asset, payer, nonce) so a replayed authorization is refused
across restarts and replicas. Status changes are compare-and-set: a write names the
statuses it expects to replace and does nothing (returns None) when another writer got
there first.

A write may carry outbox events (push notifications, operator alerts): they are kept in
the same transaction, only when the write won, once per event key; a push event only
while the task has a push config. The outbox service claims them with a lease, in order
per stream, and marks each delivered, dropped or due again.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Protocol

from bindu.a2a import Task, TaskState
from bindu.payments.events import OutboxEvent, OutboxItem, OutboxStatus
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate, StatusStats


class Storage(Protocol):
    async def open(self) -> None:
        """Connect and create or upgrade the schema (never dropping data)."""

    async def close(self) -> None: ...

    # Tasks

    async def create_task(self, task: Task, *, events: Sequence[OutboxEvent] = ()) -> None:
        """Insert a new task; raises StorageError if the id exists. ``task.owner`` is
        stored with it and kept for good: saving the task again never changes it."""

    async def get_task(self, task_id: str) -> Task | None: ...

    async def save_task(self, task: Task, *, events: Sequence[OutboxEvent] = ()) -> None:
        """Overwrite a task's document (it must exist)."""

    async def list_tasks(
        self,
        *,
        owner: str | None = None,
        context_id: str | None = None,
        state: TaskState | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Task]:
        """Tasks oldest first (created_at, then id); only ``owner``'s when given."""

    # The durable task queue (the tasks table is the queue; see migration 4)

    async def claim_due_tasks(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[Task]:
        """Lease up to ``limit`` tasks the queue owns, oldest first: ``submitted`` ones whose
        lease is free or expired, and ``working`` ones whose lease expired (their run died
        with its process). Two concurrent callers never receive the same task while its
        lease holds. A ``working`` task without a lease is never returned."""

    async def renew_task_lease(
        self, task_id: str, *, owner: str, now: datetime, lease_seconds: float
    ) -> bool:
        """Extend the lease of a submitted or working task held by ``owner``; False if
        the lease is someone else's (or none) or the task is finished."""

    async def release_task_lease(self, task_id: str, *, owner: str) -> bool:
        """Drop ``owner``'s lease: a submitted task is due again at once, a working one
        is no longer the queue's (its payment's status decides who owns it)."""

    async def transition_task(
        self,
        task: Task,
        *,
        expected: Collection[TaskState],
        lease_owner: str | None = None,
        events: Sequence[OutboxEvent] = (),
    ) -> bool:
        """Overwrite the task's document only if its stored state is one of ``expected``
        (and, when ``lease_owner`` is given, that owner holds its lease): compare-and-set.
        ``events`` are kept only when it won."""

    async def count_queued(self) -> int:
        """Number of ``submitted`` tasks (the queue's length, for SERVER__MAX_QUEUED)."""

    # Payments

    async def claim_payment(self, record: PaymentRecord) -> bool:
        """Insert a record; False if (network, asset, payer, nonce) is already taken."""

    async def release_claim(self, payment_id: str) -> None:
        """Delete a record that is still ``claimed`` (verify refused it): the nonce is free."""

    async def get_payment(self, payment_id: str) -> PaymentRecord | None: ...

    async def get_payment_for_task(self, task_id: str) -> PaymentRecord | None:
        """The newest payment record of a task."""

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
        """Apply ``update`` only if the status is one of ``expected`` (and, when
        ``lease_owner`` is given, the lease is held by that owner). ``task``, when given,
        is saved (inserted or overwritten) in the same transaction, and so are ``events``.
        Returns the new record, or None when the compare-and-set lost (nothing written). An
        ``update.refund`` books its transaction in the refund ledger in that same
        transaction: one refund per (network, tx), so if another payment already holds it
        this raises RefundTxTaken and changes nothing. Raises IllegalTransition (nothing
        written) when an expected status may not move to ``update.status``
        (bindu.payments.lifecycle)."""

    async def claim_due_payments(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[PaymentRecord]:
        """Lease up to ``limit`` open records (``OPEN_STATUSES``: payment-settling,
        payment-settled, payment-failed, payment-fulfilling; never payment-verified, which
        the task queue owns) whose ``next_check_at`` is due and whose lease is free or
        expired, oldest due first. Two concurrent callers never receive the same record
        while its lease holds. A final status clears ``next_check_at``; an open one keeps
        it."""

    async def sweep_claims(self, *, created_before: datetime, limit: int) -> list[str]:
        """Delete up to ``limit`` records still ``claimed`` that were created before
        ``created_before`` (their /verify never answered: the process died), oldest first;
        return their ids. Indexed, never a scan."""

    async def list_payments(
        self,
        *,
        statuses: Collection[PaymentStatus] | None = None,
        created_before: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[PaymentRecord]:
        """Records oldest first, for operators."""

    async def count_payments(self) -> dict[PaymentStatus, int]:
        """Number of records per status."""

    async def payment_stats(self) -> dict[PaymentStatus, StatusStats]:
        """Count and oldest created_at per status, for gauges (every status present)."""

    # A2A push notification configs (one per task; the token is a secret: never rendered)

    async def set_push_config(self, task_id: str, config: dict[str, Any]) -> None:
        """Insert or replace the task's push notification config."""

    async def get_push_config(self, task_id: str) -> dict[str, Any] | None: ...

    # The outbox (events kept by the writes above)

    def watch_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each write through this object that carried events
        (so a delivery service in the same process need not wait for its next poll)."""

    async def claim_outbox(
        self, *, now: datetime, limit: int, owner: str, lease_seconds: float
    ) -> list[OutboxItem]:
        """Lease up to ``limit`` pending events that are due, each the oldest pending event
        of its stream (so a stream is delivered strictly in order), lease free or expired,
        oldest due first."""

    async def finish_outbox(
        self, seq: int, *, owner: str, now: datetime, status: OutboxStatus, error: str | None
    ) -> bool:
        """Mark a leased event delivered or dropped (one attempt more); False if the lease
        is no longer ``owner``'s."""

    async def retry_outbox(
        self,
        seq: int,
        *,
        owner: str,
        next_attempt_at: datetime,
        error: str | None,
        attempted: bool = True,
    ) -> bool:
        """Release a leased event, due again at ``next_attempt_at`` (one attempt more when
        ``attempted``; a deferral for a destination in backoff is not one)."""

    async def list_outbox(
        self,
        *,
        task_id: str | None = None,
        status: OutboxStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[OutboxItem]:
        """Events in write order, for operators and tests."""
