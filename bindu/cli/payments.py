"""``bindu payments list|show|export|mark-refunded``: the operators' view of payment records.

Works on the configured storage (``STORAGE__URL``). Human output is aligned tables;
``--json`` and CSV are stable (fixed columns, sorted keys). The signed payload's signature
is never printed: it is dropped from every rendering and, as a last guard, scrubbed from
the output text. Errors are one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import io
import json
import re
import sys
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bindu.cli.table import table
from bindu.errors import BinduError
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate, Refund

if TYPE_CHECKING:
    from bindu.settings import Settings
    from bindu.storage.base import Storage

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_PAGE = 500
WITHHELD = "[withheld]"
EXPORT_COLUMNS = (
    "task_id",
    "payment_id",
    "payer",
    "amount",
    "asset",
    "network",
    "tx_hash",
    "age_seconds",
    "status",
)


class CommandError(Exception):
    """A refusal or failure reported as one line on stderr, exit code 1."""


# Argument types (a bad value is a usage error: argparse exits 2)


def duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 10m, 2h or 3d")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def status(text: str) -> PaymentStatus:
    value = text.strip().lower()
    for candidate in (value, f"payment-{value}"):
        try:
            return PaymentStatus(candidate)
        except ValueError:
            continue
    names = ", ".join(s.value for s in PaymentStatus)
    raise argparse.ArgumentTypeError(f"unknown status {text!r} (one of {names})")


def tx_hash(text: str) -> str:
    if not _TX_HASH.match(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 0x-prefixed 32-byte transaction hash")
    return text.strip().lower()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``payments`` sub-commands, registered by ``bindu.cli.main``."""
    sub = parser.add_subparsers(dest="payments_command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="payment records, oldest first")
    listing.add_argument(
        "--status",
        type=status,
        nargs="+",
        action="extend",
        metavar="S",
        help="only these statuses (payment-orphaned or orphaned; repeatable)",
    )
    listing.add_argument(
        "--older-than", type=duration, metavar="AGE", help="created longer ago than 10m, 2h, 3d"
    )
    listing.add_argument("--limit", type=int, default=100, help="at most N records (100)")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")

    show = sub.add_parser("show", help="one payment record in full (never its signature)")
    show.add_argument("payment_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="a JSON object instead of tables")

    export = sub.add_parser("export", help="the refund ledger as CSV or JSON")
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    export.add_argument(
        "--status",
        type=status,
        nargs="+",
        action="extend",
        metavar="S",
        help="statuses to export (default payment-orphaned)",
    )
    export.add_argument("--output", type=Path, metavar="FILE", help="write here, not stdout")

    mark = sub.add_parser(
        "mark-refunded", help="record that an orphan was refunded (checked on chain when possible)"
    )
    mark.add_argument("payment_id", metavar="ID")
    mark.add_argument("--tx", type=tx_hash, required=True, metavar="HASH", help="refund tx hash")
    mark.add_argument("--note", help="free text kept with the refund")


# Rendering helpers


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def age_seconds(record: PaymentRecord, now: datetime) -> int:
    return max(0, int((now - record.created_at).total_seconds()))


def human_age(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    minutes, _ = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def transaction_of(record: PaymentRecord) -> str | None:
    """The payment's own transaction: the proven one, else whatever the facilitator said."""
    if record.receipt is not None and record.receipt.transaction:
        return record.receipt.transaction
    return record.settle_tx


def signatures(value: Any) -> set[str]:
    """Every value held under a ``signature`` key, at any depth."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).lower() == "signature" and isinstance(item, str) and item:
                found.add(item)
            else:
                found |= signatures(item)
    elif isinstance(value, list):
        for item in value:
            found |= signatures(item)
    return found


def without_signatures(value: Any) -> Any:
    """A copy of ``value`` with every ``signature`` key dropped."""
    if isinstance(value, dict):
        return {
            key: without_signatures(item)
            for key, item in value.items()
            if str(key).lower() != "signature"
        }
    if isinstance(value, list):
        return [without_signatures(item) for item in value]
    return copy.deepcopy(value)


def authorization_of(record: PaymentRecord) -> dict[str, Any] | None:
    inner = (record.payload or {}).get("payload")
    auth = inner.get("authorization") if isinstance(inner, dict) else None
    return dict(auth) if isinstance(auth, dict) else None


def summary_json(record: PaymentRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "taskId": record.task_id,
        "status": record.status.value,
        "network": record.network,
        "asset": record.asset,
        "payTo": record.pay_to,
        "payer": record.payer,
        "amount": record.amount,
        "nonce": record.nonce,
        "transaction": transaction_of(record),
        "settleTx": record.settle_tx,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "ageSeconds": age_seconds(record, now),
        "attempts": record.attempts,
        "nextCheckAt": _iso(record.next_check_at),
        "verdictAt": _iso(record.verdict_at),
        "error": record.error,
        "receipt": None if record.receipt is None else record.receipt.to_json(),
        "refund": None if record.refund is None else record.refund.to_json(),
        "decodeError": record.decode_error,
    }


def full_json(record: PaymentRecord, now: datetime) -> dict[str, Any]:
    """Every field of the record; the payload without its signature."""
    return {
        **summary_json(record, now),
        "validAfter": record.valid_after,
        "validBefore": record.valid_before,
        "authorization": authorization_of(record),
        "payload": without_signatures(record.payload),
        "requirements": record.requirements,
        "answers": record.answers,
        "leaseOwner": record.lease_owner,
        "leaseExpiresAt": _iso(record.lease_expires_at),
    }


def dump_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False)


def _compact(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, text) rows of a JSON value, for a field/value table."""
    if value is None and not prefix:
        return [("(none)", "")]
    if isinstance(value, dict) and value:
        rows: list[tuple[str, str]] = []
        for key in sorted(value):
            rows += flatten(value[key], f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix or "(value)", _compact(value))]


def _unix(value: int) -> str:
    try:
        return f"{value} ({datetime.fromtimestamp(value, UTC).isoformat()})"
    except (OverflowError, OSError, ValueError):
        return str(value)


def _indented(title: str, body: str) -> str:
    return title + "\n" + "\n".join("  " + line for line in body.split("\n"))


def _section(title: str, rows: Sequence[tuple[str, object]]) -> str:
    return _indented(title, table(["field", "value"], rows))


def render_show(record: PaymentRecord, now: datetime) -> str:
    age = age_seconds(record, now)
    lease = (
        f"{record.lease_owner} until {_iso(record.lease_expires_at)}" if record.lease_owner else ""
    )
    main: list[tuple[str, object]] = [
        ("payment", record.id),
        ("task", record.task_id),
        ("status", record.status.value),
        ("network", record.network),
        ("asset", record.asset),
        ("payTo", record.pay_to),
        ("payer", record.payer),
        ("amount", record.amount),
        ("nonce", record.nonce),
        ("validAfter", _unix(record.valid_after)),
        ("validBefore", _unix(record.valid_before)),
        ("created", f"{_iso(record.created_at)} ({human_age(age)} ago)"),
        ("updated", _iso(record.updated_at)),
        ("settle tx", record.settle_tx),
        ("error", record.error),
        ("attempts", record.attempts),
        ("next check", _iso(record.next_check_at) or "none"),
        ("lease", lease),
        ("verdict at", _iso(record.verdict_at)),
    ]
    if record.decode_error:
        main.append(("decode error", record.decode_error))
    parts = [table(["field", "value"], main)]

    auth = authorization_of(record)
    parts.append(
        _section(
            "authorization (signature withheld)",
            flatten(auth) if auth else [("(none)", "")],
        )
    )
    rest = without_signatures(record.payload)
    if isinstance(rest, dict):
        inner = rest.get("payload")
        if isinstance(inner, dict):
            inner.pop("authorization", None)
            if not inner:
                rest.pop("payload")
    parts.append(_section("payload (signature withheld)", flatten(rest)))
    parts.append(_section("requirements", flatten(record.requirements)))
    receipt = record.receipt.to_json() if record.receipt else None
    parts.append(_section("receipt", flatten(receipt) if receipt else [("(none)", "")]))
    refund = record.refund.to_json() if record.refund else None
    parts.append(_section("refund", flatten(refund) if refund else [("(none)", "")]))
    answers = [
        (
            n,
            answer.get("source", ""),
            answer.get("at", ""),
            _compact({k: v for k, v in answer.items() if k not in ("source", "at")}),
        )
        for n, answer in enumerate(record.answers, 1)
    ]
    if answers:
        parts.append(
            _indented(f"answers ({len(answers)})", table(["#", "source", "at", "answer"], answers))
        )
    else:
        parts.append("answers (0)")
    return "\n\n".join(parts)


def export_row(record: PaymentRecord, now: datetime) -> dict[str, Any]:
    return {
        "task_id": record.task_id,
        "payment_id": record.id,
        "payer": record.payer,
        "amount": record.amount,
        "asset": record.asset,
        "network": record.network,
        "tx_hash": transaction_of(record) or "",
        "age_seconds": age_seconds(record, now),
        "status": record.status.value,
    }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def render_export(rows: Iterable[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return dump_json([{_camel(k): v for k, v in row.items()} for row in rows]) + "\n"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# Running


@dataclass
class Output:
    """stdout/stderr with every known signature scrubbed, whatever renders it."""

    secrets: set[str] = field(default_factory=set)

    def clean(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, WITHHELD)
        return text

    def out(self, text: str) -> None:
        sys.stdout.write(self.clean(text).rstrip("\n") + "\n")

    def err(self, text: str) -> None:
        print(self.clean(text), file=sys.stderr)

    def watch(self, records: Iterable[PaymentRecord]) -> None:
        for record in records:
            self.secrets |= signatures(record.payload)


def _log_level(settings: Settings) -> str:
    # Storage's INFO lines (migrations) would clutter an operator's output.
    level = settings.log_level.upper()
    return level if level in ("TRACE", "DEBUG") else "WARNING"


def _check_database(settings: Settings) -> None:
    """An operator command never creates an empty SQLite file where none was."""
    url = settings.storage.url
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path != ":memory:" and not path.startswith("file:") and not Path(path).exists():
            raise CommandError(f"no database at {path} (STORAGE__URL={url})")


async def _all(
    storage: Storage, statuses: Collection[PaymentStatus] | None, created_before: datetime | None
) -> list[PaymentRecord]:
    records: list[PaymentRecord] = []
    while True:
        page = await storage.list_payments(
            statuses=statuses, created_before=created_before, limit=_PAGE, offset=len(records)
        )
        records += page
        if len(page) < _PAGE:
            return records


async def _get(storage: Storage, payment_id: str) -> PaymentRecord:
    record = await storage.get_payment(payment_id)
    if record is None:
        raise CommandError(f"no payment {payment_id}")
    return record


async def _list(args: argparse.Namespace, storage: Storage, io_: Output, now: datetime) -> int:
    if args.limit < 0:
        raise CommandError("--limit must be >= 0")
    created_before = now - args.older_than if args.older_than is not None else None
    records = await storage.list_payments(
        statuses=args.status, created_before=created_before, limit=args.limit
    )
    io_.watch(records)
    if args.json:
        io_.out(dump_json([summary_json(r, now) for r in records]))
        return 0
    rows = [
        (
            r.id,
            r.task_id,
            r.status.value,
            r.amount,
            r.payer,
            transaction_of(r) or "",
            human_age(age_seconds(r, now)),
        )
        for r in records
    ]
    if rows:
        io_.out(table(["id", "task", "status", "amount", "payer", "tx", "age"], rows))
    more = " (limit reached: --limit for more)" if args.limit and len(records) == args.limit else ""
    io_.out(f"{len(records)} payment(s){more}")
    return 0


async def _show(args: argparse.Namespace, storage: Storage, io_: Output, now: datetime) -> int:
    record = await _get(storage, args.payment_id)
    io_.watch([record])
    io_.out(dump_json(full_json(record, now)) if args.json else render_show(record, now))
    return 0


async def _export(args: argparse.Namespace, storage: Storage, io_: Output, now: datetime) -> int:
    statuses = args.status or [PaymentStatus.ORPHANED]
    records = await _all(storage, statuses, None)
    io_.watch(records)
    text = io_.clean(render_export([export_row(r, now) for r in records], args.format))
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            await asyncio.to_thread(args.output.write_text, text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        io_.err(f"wrote {len(records)} payment(s) to {args.output}")
    return 0


async def _mark_refunded(
    args: argparse.Namespace, storage: Storage, io_: Output, now: datetime, settings: Settings
) -> int:
    from bindu.payments.refunds import check_refund_on_chain, refunded_task

    record = await _get(storage, args.payment_id)
    io_.watch([record])
    if record.status is not PaymentStatus.ORPHANED:
        raise CommandError(
            f"payment {record.id} is {record.status.value}: only payment-orphaned payments"
            " can be marked refunded"
        )
    x402 = settings.x402
    rpc_url = x402.rpc_urls.get(record.network)
    amount, block = record.amount, None
    if rpc_url is not None:
        check = await check_refund_on_chain(
            rpc_url,
            record,
            args.tx,
            timeout=x402.rpc_timeout_seconds,
            confirmations=x402.confirmations,
        )
        if not check.accepted:
            raise CommandError(f"refused: {check.reason}")
        amount, block = str(check.amount), check.block_number
    refund = Refund(
        transaction=args.tx,
        amount=amount,
        recorded_at=now,
        block_number=block,
        checked_on_chain=rpc_url is not None,
        note=args.note,
    )
    task = await storage.get_task(record.task_id)
    # The storage's refund ledger books the transaction in this same write: one refund
    # per (network, tx), so of two operators using one transfer for two orphans, one wins
    # and the other gets RefundTxTaken (reported as one line), whatever the timing.
    done = await storage.transition_payment(
        record.id,
        {PaymentStatus.ORPHANED},
        PaymentUpdate(status=PaymentStatus.REFUNDED, refund=refund),
        now=now,
        task=None if task is None else refunded_task(task, record, refund),
    )
    if done is None:
        current = await storage.get_payment(record.id)
        state = current.status.value if current else "gone"
        raise CommandError(f"payment {record.id} changed meanwhile (now {state}); nothing recorded")
    # Warnings only once recorded: a refusal stays one line.
    if rpc_url is None:
        io_.err(
            f"warning: refund {args.tx} NOT checked on chain"
            f" (no X402__RPC_URLS entry for {record.network}); recorded as unchecked"
        )
    if task is None:
        io_.err(f"warning: task {record.task_id} not found; only the payment record is updated")
    rows: list[tuple[str, object]] = [
        ("payment", done.id),
        ("task", done.task_id),
        ("status", done.status.value),
        ("refund tx", refund.transaction),
        ("amount", refund.amount),
        ("block", "" if refund.block_number is None else refund.block_number),
        ("checked on chain", "yes" if refund.checked_on_chain else "NO"),
        ("note", refund.note or ""),
    ]
    io_.out(table(["field", "value"], rows))
    return 0


async def _run(args: argparse.Namespace, io_: Output, settings: Settings) -> int:
    from bindu.a2a import utcnow
    from bindu.storage.factory import open_storage

    storage = await open_storage(settings.storage)
    now = utcnow()
    try:
        command = args.payments_command
        if command == "list":
            return await _list(args, storage, io_, now)
        if command == "show":
            return await _show(args, storage, io_, now)
        if command == "export":
            return await _export(args, storage, io_, now)
        return await _mark_refunded(args, storage, io_, now, settings)
    finally:
        await storage.close()


def payments(args: argparse.Namespace) -> int:
    from bindu.cli.logging import configure
    from bindu.settings import load_settings

    io_ = Output()
    try:
        settings = load_settings()
        configure(_log_level(settings))
        _check_database(settings)
        return asyncio.run(_run(args, io_, settings))
    except (CommandError, BinduError) as exc:
        io_.err(f"bindu payments: {' '.join(str(exc).split())}")
        return 1
