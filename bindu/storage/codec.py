"""What every backend shares: UTC checks, record normalisation, query parameters and
tolerant decoding of stored payment rows.

Backends differ only in how a time or a JSON value is represented in a column, so those
two conversions are passed in as functions and everything else lives here once.
"""

from __future__ import annotations

import json as _json
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bindu.errors import StorageError
from bindu.payments.events import OutboxItem, OutboxStatus
from bindu.payments.records import (
    FINAL_STATUSES,
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
    Receipt,
    Refund,
    StatusStats,
)

# Stands in for an unreadable required timestamp; decode_error says the row is corrupt.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# SQLite INTEGER and Postgres bigint: refuse larger values up front, in every backend alike.
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

TimeEncoder = Callable[[datetime | None], Any]
JsonEncoder = Callable[[Any], Any]
TimeDecoder = Callable[[Any], datetime]
JsonDecoder = Callable[[Any], Any]


def utc(value: datetime) -> datetime:
    """``value`` in UTC; a naive datetime is refused rather than guessed at."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise StorageError(f"naive datetime {value.isoformat()}: storage needs aware UTC times")
    return value.astimezone(UTC)


def utc_opt(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def check_page(limit: int, offset: int) -> None:
    # SQLite reads a negative LIMIT as "no limit" and Postgres rejects it: refuse it everywhere.
    if limit < 0 or offset < 0:
        raise StorageError(f"limit and offset must be >= 0, got {limit} and {offset}")


def checked_push_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as every backend stores it: a JSON object (a fresh copy); anything that
    is not plain JSON is refused up front, in every backend alike."""
    if not isinstance(config, dict):
        raise StorageError(f"a push config must be a JSON object, got {type(config).__name__}")
    try:
        copied: dict[str, Any] = _json.loads(_json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"push config is not plain JSON: {exc}") from exc
    return copied


def decode_push_config(task_id: str, raw: Any, load_json: JsonDecoder) -> dict[str, Any]:
    """A stored push config; an unreadable one raises StorageError (like an unreadable task)
    rather than silently disabling the payer's notifications."""
    try:
        value = load_json(raw)
    except (TypeError, ValueError) as exc:
        raise StorageError(f"push config of task {task_id} is unreadable: {exc}") from exc
    if not isinstance(value, dict):
        raise StorageError(f"push config of task {task_id} is not a JSON object")
    return value


def normalize_refund(refund: Refund | None) -> Refund | None:
    """The refund as stored: its time in UTC (a naive one is refused like any other)."""
    if refund is None:
        return None
    return replace(refund, recorded_at=utc(refund.recorded_at))


def normalize_payment(record: PaymentRecord) -> PaymentRecord:
    """The record as stored: addresses and nonce lower-cased (so the unique key cannot be
    dodged by changing hex case) and every time in UTC."""
    for name in ("valid_after", "valid_before", "attempts"):
        value = getattr(record, name)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise StorageError(f"payment {record.id}: {name}={value} does not fit in 64 bits")
    return record.evolve(
        asset=record.asset.lower(),
        pay_to=record.pay_to.lower(),
        payer=record.payer.lower(),
        nonce=record.nonce.lower(),
        created_at=utc(record.created_at),
        updated_at=utc(record.updated_at),
        next_check_at=utc_opt(record.next_check_at),
        lease_expires_at=utc_opt(record.lease_expires_at),
        verdict_at=utc_opt(record.verdict_at),
        refund=normalize_refund(record.refund),
        decode_error=None,
    )


def clears_next_check(update: PaymentUpdate) -> bool:
    """A final status has nothing left to check, and PaymentUpdate cannot express "set
    next_check_at to NULL" (None means unchanged), so a final status clears it."""
    return update.status in FINAL_STATUSES


def payment_params(
    record: PaymentRecord, *, time: TimeEncoder, json: JsonEncoder
) -> dict[str, Any]:
    """Bind parameters for inserting ``record`` (already normalised)."""
    return {
        "id": record.id,
        "task_id": record.task_id,
        "status": str(record.status),
        "network": record.network,
        "asset": record.asset,
        "pay_to": record.pay_to,
        "payer": record.payer,
        "amount": record.amount,
        "nonce": record.nonce,
        "valid_after": record.valid_after,
        "valid_before": record.valid_before,
        "payload": None if record.payload is None else json(record.payload),
        "requirements": None if record.requirements is None else json(record.requirements),
        "created_at": time(record.created_at),
        "updated_at": time(record.updated_at),
        "settle_tx": record.settle_tx,
        "error": record.error,
        "answers": json(list(record.answers)),
        "attempts": record.attempts,
        "next_check_at": time(record.next_check_at),
        "lease_owner": record.lease_owner,
        "lease_expires_at": time(record.lease_expires_at),
        "receipt": None if record.receipt is None else json(record.receipt.to_json()),
        "verdict_at": time(record.verdict_at),
        "refund": None if record.refund is None else json(record.refund.to_json()),
    }


def transition_params(
    payment_id: str,
    expected: Collection[PaymentStatus],
    update: PaymentUpdate,
    *,
    now: datetime,
    lease_owner: str | None,
    time: TimeEncoder,
    json: JsonEncoder,
) -> dict[str, Any]:
    """Bind parameters for the ``transition_payment`` statement of either SQL dialect."""
    refund = normalize_refund(update.refund)
    return {
        "id": payment_id,
        "expected": [str(status) for status in expected],
        "lease_owner": lease_owner,
        "status": None if update.status is None else str(update.status),
        "settle_tx": update.settle_tx,
        "error": update.error,
        "clear_error": update.clear_error,
        "answer": None if update.answer is None else json(update.answer),
        "attempts": update.attempts,
        "next_check_at": time(utc_opt(update.next_check_at)),
        "clear_next_check": clears_next_check(update),
        "receipt": None if update.receipt is None else json(update.receipt.to_json()),
        "verdict_at": time(utc_opt(update.verdict_at)),
        "refund": None if refund is None else json(refund.to_json()),
        "release_lease": update.release_lease,
        "lease_to": update.lease_to,
        "lease_until": time(utc_opt(update.lease_until)),
        "updated_at": time(utc(now)),
    }


class _RowDecoder:
    """Reads one stored row, collecting problems instead of raising: a corrupt record must
    still reach the reconciler, flagged, rather than crash whoever listed it."""

    def __init__(self, row: Mapping[str, Any], load_json: JsonDecoder, load_time: TimeDecoder):
        self.row = row
        self.load_json = load_json
        self.load_time = load_time
        self.problems: list[str] = []

    def _json(self, column: str) -> tuple[bool, Any]:
        try:
            return True, self.load_json(self.row[column])
        except (ValueError, TypeError):
            self.problems.append(f"{column}: invalid JSON")
            return False, None

    def json_object(self, column: str) -> dict[str, Any] | None:
        if self.row[column] is None:
            return None
        ok, value = self._json(column)
        if not ok:
            return None
        if not isinstance(value, dict):
            self.problems.append(f"{column}: not a JSON object")
            return None
        return value

    def answers(self) -> list[dict[str, Any]]:
        if self.row["answers"] is None:
            return []
        ok, value = self._json("answers")
        if not ok:
            return []
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.problems.append("answers: not a list of JSON objects")
            return []
        return value

    def receipt(self) -> Receipt | None:
        data = self.json_object("receipt")
        if data is None:
            return None
        try:
            return Receipt.from_json(data)
        except KeyError as exc:
            self.problems.append(f"receipt: missing {exc}")
        except (TypeError, ValueError):
            self.problems.append("receipt: malformed")
        return None

    def refund(self) -> Refund | None:
        data = self.json_object("refund")
        if data is None:
            return None
        try:
            return normalize_refund(Refund.from_json(data))
        except KeyError as exc:
            self.problems.append(f"refund: missing {exc}")
        except (TypeError, ValueError, StorageError):
            self.problems.append("refund: malformed")
        return None

    def status(self) -> PaymentStatus:
        raw = self.row["status"]
        try:
            return PaymentStatus(raw)
        except ValueError:
            # payment-failed is an open status: the record stays visible as needing attention.
            self.problems.append(f"status: unknown {raw!r}")
            return PaymentStatus.FAILED

    def time(self, column: str) -> datetime | None:
        raw = self.row[column]
        if raw is None:
            return None
        try:
            return self.load_time(raw)
        except (ValueError, TypeError):
            self.problems.append(f"{column}: invalid time")
            return None

    def required_time(self, column: str) -> datetime:
        value = self.time(column)
        if value is None:
            if self.row[column] is None:
                self.problems.append(f"{column}: missing")
            return EPOCH
        return value

    def integer(self, column: str) -> int:
        raw = self.row[column]
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        self.problems.append(f"{column}: not an integer")
        return 0


def decode_payment(
    row: Mapping[str, Any], *, load_json: JsonDecoder, load_time: TimeDecoder
) -> PaymentRecord:
    """A PaymentRecord from a stored row; ``decode_error`` lists whatever was unreadable."""
    d = _RowDecoder(row, load_json, load_time)
    record = PaymentRecord(
        id=str(row["id"]),
        task_id=str(row["task_id"]),
        status=d.status(),
        network=str(row["network"]),
        asset=str(row["asset"]),
        pay_to=str(row["pay_to"]),
        payer=str(row["payer"]),
        amount=str(row["amount"]),
        nonce=str(row["nonce"]),
        valid_after=d.integer("valid_after"),
        valid_before=d.integer("valid_before"),
        payload=d.json_object("payload"),
        requirements=d.json_object("requirements"),
        created_at=d.required_time("created_at"),
        updated_at=d.required_time("updated_at"),
        settle_tx=row["settle_tx"],
        error=row["error"],
        answers=d.answers(),
        attempts=d.integer("attempts"),
        next_check_at=d.time("next_check_at"),
        lease_owner=row["lease_owner"],
        lease_expires_at=d.time("lease_expires_at"),
        receipt=d.receipt(),
        verdict_at=d.time("verdict_at"),
        refund=d.refund(),
    )
    if d.problems:
        return record.evolve(decode_error="; ".join(d.problems))
    return record


def _stored_status(raw: Any) -> PaymentStatus:
    # An unknown stored status counts as payment-failed, matching how decode_payment reads it.
    try:
        return PaymentStatus(raw)
    except ValueError:
        return PaymentStatus.FAILED


def status_counts(rows: Collection[tuple[Any, int]]) -> dict[PaymentStatus, int]:
    """Every status with its count (zeros included)."""
    counts = dict.fromkeys(PaymentStatus, 0)
    for raw, n in rows:
        counts[_stored_status(raw)] += int(n)
    return counts


def status_stats(
    rows: Collection[tuple[Any, int, Any]], *, load_time: TimeDecoder
) -> dict[PaymentStatus, StatusStats]:
    """Every status with its count and oldest created_at (0 and None when absent), from
    (stored status, count, oldest stored created_at) rows. An unreadable time is skipped:
    gauges must not fail because one row is corrupt."""
    counts: dict[PaymentStatus, int] = dict.fromkeys(PaymentStatus, 0)
    oldest: dict[PaymentStatus, datetime | None] = dict.fromkeys(PaymentStatus)
    for raw, n, raw_time in rows:
        status = _stored_status(raw)
        counts[status] += int(n)
        try:
            when = None if raw_time is None else load_time(raw_time)
        except (TypeError, ValueError):
            when = None
        current = oldest[status]
        if when is not None and (current is None or when < current):
            oldest[status] = when
    return {status: StatusStats(counts[status], oldest[status]) for status in PaymentStatus}


def decode_outbox(
    row: Mapping[str, Any], *, load_json: JsonDecoder, load_time: TimeDecoder
) -> OutboxItem:
    """An outbox row; unlike payment rows these are only ever written by bindu, so an
    unreadable one is an error, not a value to carry on with."""
    try:
        body = load_json(row["body"])
        if not isinstance(body, dict):
            raise TypeError(f"body is {type(body).__name__}, not an object")
        lease = row["lease_expires_at"]
        finished = row["finished_at"]
        return OutboxItem(
            seq=int(row["seq"]),
            kind=row["kind"],
            key=row["key"],
            stream=row["stream"],
            task_id=row["task_id"],
            body=body,
            status=OutboxStatus(row["status"]),
            attempts=int(row["attempts"]),
            error=row["error"],
            created_at=load_time(row["created_at"]),
            next_attempt_at=load_time(row["next_attempt_at"]),
            lease_owner=row["lease_owner"],
            lease_expires_at=None if lease is None else load_time(lease),
            finished_at=None if finished is None else load_time(finished),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"outbox event {row.get('seq')} is unreadable: {exc}") from exc
