"""``bindu payments list|show|export|mark-refunded`` as a subprocess against a SQLite file.

Every run asserts that no signature of any stored payload appears in its stdout or stderr.
The mark-refunded tests at the end refund real orphans on the devnet.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from bindu.a2a import Task, TaskState, TaskStatus, utcnow
from bindu.devnet import Devnet
from bindu.devnet import token as devnet_token
from bindu.payments.records import (
    META_RECEIPTS,
    META_REFUND,
    META_STATUS,
    PaymentRecord,
    PaymentStatus,
    PaymentUpdate,
    Receipt,
)
from bindu.payments.task_meta import with_payment_meta
from bindu.storage.base import Storage
from bindu.storage.postgres import PostgresStorage
from bindu.storage.sqlite import SqliteStorage
from tests.support.payments import (
    AMOUNT,
    requirements_for,
    settle_directly,
    sign,
    store_failed_payment,
)
from tests.support.postgres import PG_URL, fresh_schema
from tests.support.servers import REPO

S = PaymentStatus
SIGNATURE = "0x" + "5a" * 65
EXPORT_HEADER = [
    "task_id",
    "payment_id",
    "payer",
    "amount",
    "asset",
    "network",
    "tx_hash",
    "age_seconds",
    "status",
]
NETWORK = "eip155:31337"
TOKEN = "0x" + "a1" * 20
PAY_TO = "0x" + "b1" * 20
PAYER = "0x" + "c1" * 20
PAID_TX = "0x" + "d1" * 32
PENDING_TX = "0x" + "d2" * 32
REFUND_TX = "0x" + "e1" * 32


@dataclass
class Run:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    """The parent's environment without any bindu settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("X402__", "STORAGE__", "SERVER__", "LOG_LEVEL"))
    }
    return {**env, **extra}


async def bindu_payments(
    env: dict[str, str], *args: str, secrets: tuple[str, ...] = (SIGNATURE,)
) -> Run:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bindu.cli.main", "payments", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for secret in secrets:
        assert secret not in proc.stdout and secret not in proc.stderr, args
        assert secret.removeprefix("0x") not in proc.stdout + proc.stderr, args
    return Run(proc.returncode, proc.stdout, proc.stderr)


def one_line_error(run: Run) -> str:
    assert run.code == 1, run
    assert run.out == ""
    lines = run.err.strip().splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


def payload_for(nonce: str) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "payload": {
            "signature": SIGNATURE,
            "authorization": {
                "from": PAYER,
                "to": PAY_TO,
                "value": "10000",
                "validAfter": "0",
                "validBefore": "2000000000",
                "nonce": nonce,
            },
        },
        "accepted": {"scheme": "exact", "network": NETWORK},
    }


def make_record(payment_id: str, status: PaymentStatus, age: timedelta, **changes: Any):
    now = utcnow()
    nonce = "0x" + payment_id.encode().hex().rjust(64, "0")
    record = PaymentRecord(
        id=payment_id,
        task_id=f"task-{payment_id}",
        status=status,
        network=NETWORK,
        asset=TOKEN,
        pay_to=PAY_TO,
        payer=PAYER,
        amount="10000",
        nonce=nonce,
        valid_after=0,
        valid_before=2_000_000_000,
        payload=payload_for(nonce),
        requirements={"scheme": "exact", "amount": "10000", "payTo": PAY_TO},
        created_at=now - age,
        updated_at=now,
    )
    return record.evolve(**changes)


RECEIPT = Receipt(PAID_TX, NETWORK, PAYER, "10000", TOKEN, 7)
ANSWER = {"source": "settle", "at": "2026-01-01T00:00:00+00:00", "errorReason": "timeout"}


@dataclass
class Ledger:
    db: Path
    env: dict[str, str]
    records: dict[str, PaymentRecord]


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    """Four records, oldest first: two orphans (one proven, one known only by the hash the
    facilitator gave), a failed one and a completed one; each with its task."""
    db = tmp_path / "bindu.db"
    storage = SqliteStorage(str(db))
    await storage.open()
    records = [
        make_record("orphan-a", S.ORPHANED, timedelta(hours=3), receipt=RECEIPT),
        make_record("orphan-b", S.ORPHANED, timedelta(hours=2), settle_tx=PENDING_TX),
        make_record(
            "failed-1",
            S.FAILED,
            timedelta(hours=1),
            error="settle_timeout",
            answers=[ANSWER],
            attempts=2,
            next_check_at=utcnow() + timedelta(minutes=5),
        ),
        make_record("done-1", S.COMPLETED, timedelta(minutes=10)),
    ]
    for record in records:
        task = Task(
            id=record.task_id,
            status=TaskStatus(state=TaskState.FAILED),
            metadata={META_STATUS: record.status.value},
        )
        await storage.create_task(task)
        assert await storage.claim_payment(record)
    await storage.close()
    yield Ledger(
        db,
        clean_env(STORAGE__URL=f"sqlite:///{db}"),
        {r.id: r for r in records},
    )


async def stored(db: Path, payment_id: str) -> tuple[PaymentRecord | None, Task | None]:
    storage = SqliteStorage(str(db))
    await storage.open()
    try:
        record = await storage.get_payment(payment_id)
        task = await storage.get_task(record.task_id) if record else None
        return record, task
    finally:
        await storage.close()


# list


async def test_list_table(ledger: Ledger) -> None:
    run = await bindu_payments(ledger.env, "list")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].split() == ["id", "task", "status", "amount", "payer", "tx", "age"]
    rows = [line.split() for line in lines[1:-1]]
    assert [row[0] for row in rows] == ["orphan-a", "orphan-b", "failed-1", "done-1"]
    assert rows[0] == [
        "orphan-a",
        "task-orphan-a",
        "payment-orphaned",
        "10000",
        PAYER,
        PAID_TX,
        "3h00m",
    ]
    assert rows[1][5] == PENDING_TX and rows[3][-1] == "10m"
    assert lines[-1] == "4 payment(s)"
    # Aligned: every column starts at the same offset on every line.
    status_at = lines[0].index("status")
    assert all(line[status_at:].startswith("payment-") for line in lines[1:-1])


async def test_list_filters_and_limit(ledger: Ledger) -> None:
    async def ids(*args: str) -> list[str]:
        run = await bindu_payments(ledger.env, "list", *args)
        assert run.code == 0, run.err
        return [line.split()[0] for line in run.out.splitlines()[1:-1]]

    assert await ids("--status", "payment-orphaned") == ["orphan-a", "orphan-b"]
    assert await ids("--status", "failed", "completed") == ["failed-1", "done-1"]
    assert await ids("--status", "failed", "--status", "orphaned") == [
        "orphan-a",
        "orphan-b",
        "failed-1",
    ]
    assert await ids("--older-than", "90m") == ["orphan-a", "orphan-b"]
    assert await ids("--older-than", "2h", "--status", "orphaned") == ["orphan-a", "orphan-b"]
    assert await ids("--older-than", "1d") == []
    run = await bindu_payments(ledger.env, "list", "--limit", "1")
    assert [line.split()[0] for line in run.out.splitlines()[1:-1]] == ["orphan-a"]
    assert "limit reached" in run.out.splitlines()[-1]
    assert await ids("--status", "refunded") == []


async def test_list_json(ledger: Ledger) -> None:
    run = await bindu_payments(ledger.env, "list", "--json")
    assert run.code == 0, run.err
    items = json.loads(run.out)
    assert [item["id"] for item in items] == ["orphan-a", "orphan-b", "failed-1", "done-1"]
    # Stable: sorted keys, the same key set for every record, camelCase.
    assert run.out == json.dumps(items, sort_keys=True, indent=2) + "\n"
    keys = {frozenset(item) for item in items}
    assert len(keys) == 1
    assert all("_" not in key for key in next(iter(keys)))
    first = items[0]
    assert first["taskId"] == "task-orphan-a" and first["status"] == "payment-orphaned"
    assert first["transaction"] == PAID_TX and first["receipt"] == RECEIPT.to_json()
    assert first["payer"] == PAYER and first["amount"] == "10000"
    assert 3 * 3600 <= first["ageSeconds"] < 3 * 3600 + 120
    assert items[1]["transaction"] == PENDING_TX and items[1]["settleTx"] == PENDING_TX
    assert items[2]["error"] == "settle_timeout" and items[2]["attempts"] == 2
    assert items[2]["nextCheckAt"] is not None and items[3]["nextCheckAt"] is None
    assert "payload" not in first  # the listing has no payloads at all
    filtered = await bindu_payments(ledger.env, "list", "--json", "--status", "completed")
    assert [item["id"] for item in json.loads(filtered.out)] == ["done-1"]


# show


async def test_show_table(ledger: Ledger) -> None:
    run = await bindu_payments(ledger.env, "show", "failed-1")
    assert run.code == 0, run.err
    text = run.out
    record = ledger.records["failed-1"]
    for expected in (
        "failed-1",
        "task-failed-1",
        "payment-failed",
        record.nonce,
        "settle_timeout",
        "authorization (signature withheld)",
        "validBefore",
        "2000000000",
        '"errorReason":"timeout"',
        "answers (1)",
    ):
        assert expected in text, expected
    # The authorization's fields, aligned under their section.
    auth = text.split("authorization (signature withheld)\n")[1].split("\n\n")[0]
    fields = dict(line.split(maxsplit=1) for line in auth.splitlines()[1:])
    assert fields == {
        "from": PAYER,
        "nonce": record.nonce,
        "to": PAY_TO,
        "validAfter": "0",
        "validBefore": "2000000000",
        "value": "10000",
    }
    assert "signature" not in text.replace("signature withheld", "")

    orphan = await bindu_payments(ledger.env, "show", "orphan-a")
    receipt = orphan.out.split("\nreceipt\n")[1].split("\n\n")[0]
    assert PAID_TX in receipt and "blockNumber  7" in receipt
    assert "refund\n  field   value\n  (none)" in orphan.out


async def test_show_json(ledger: Ledger) -> None:
    run = await bindu_payments(ledger.env, "show", "failed-1", "--json")
    assert run.code == 0, run.err
    doc = json.loads(run.out)
    assert run.out == json.dumps(doc, sort_keys=True, indent=2) + "\n"
    record = ledger.records["failed-1"]
    assert doc["id"] == "failed-1" and doc["status"] == "payment-failed"
    assert doc["authorization"] == record.payload["payload"]["authorization"]  # type: ignore[index]
    assert doc["payload"]["payload"] == {"authorization": doc["authorization"]}
    assert doc["payload"]["accepted"] == {"scheme": "exact", "network": NETWORK}
    assert doc["requirements"] == record.requirements
    assert doc["answers"] == [ANSWER]
    assert doc["error"] == "settle_timeout" and doc["attempts"] == 2
    assert doc["nextCheckAt"] is not None and doc["refund"] is None
    assert (doc["validAfter"], doc["validBefore"]) == (0, 2_000_000_000)
    assert "signature" not in run.out


async def test_show_unknown_id(ledger: Ledger) -> None:
    for args in (("show", "nope"), ("show", "nope", "--json")):
        line = one_line_error(await bindu_payments(ledger.env, *args))
        assert "no payment nope" in line


# export


async def test_export_csv_default_is_the_orphans(ledger: Ledger) -> None:
    run = await bindu_payments(ledger.env, "export")
    assert run.code == 0, run.err
    rows = list(csv.reader(io.StringIO(run.out)))
    assert rows[0] == EXPORT_HEADER
    body = [dict(zip(EXPORT_HEADER, row, strict=True)) for row in rows[1:]]
    assert [row["payment_id"] for row in body] == ["orphan-a", "orphan-b"]
    a, b = body
    assert a == {
        "task_id": "task-orphan-a",
        "payment_id": "orphan-a",
        "payer": PAYER,
        "amount": "10000",
        "asset": TOKEN,
        "network": NETWORK,
        "tx_hash": PAID_TX,
        "age_seconds": a["age_seconds"],
        "status": "payment-orphaned",
    }
    assert 3 * 3600 <= int(a["age_seconds"]) < 3 * 3600 + 120
    assert b["tx_hash"] == PENDING_TX and 2 * 3600 <= int(b["age_seconds"]) < 2 * 3600 + 120


async def test_export_json_other_statuses_and_file(ledger: Ledger, tmp_path: Path) -> None:
    run = await bindu_payments(
        ledger.env, "export", "--format", "json", "--status", "failed", "completed"
    )
    assert run.code == 0, run.err
    items = json.loads(run.out)
    assert run.out == json.dumps(items, sort_keys=True, indent=2) + "\n"
    assert [item["paymentId"] for item in items] == ["failed-1", "done-1"]
    assert set(items[0]) == {
        "taskId",
        "paymentId",
        "payer",
        "amount",
        "asset",
        "network",
        "txHash",
        "ageSeconds",
        "status",
    }
    assert items[0]["txHash"] == "" and isinstance(items[0]["ageSeconds"], int)

    target = tmp_path / "ledger.csv"
    written = await bindu_payments(ledger.env, "export", "--output", str(target))
    assert written.code == 0 and written.out == ""
    assert "wrote 2 payment(s)" in written.err
    text = target.read_text()
    assert SIGNATURE not in text
    assert [row[1] for row in csv.reader(io.StringIO(text))] == [
        "payment_id",
        "orphan-a",
        "orphan-b",
    ]


# usage and environment errors


async def test_bad_usage_exits_2(ledger: Ledger) -> None:
    for args in (
        ("list", "--older-than", "5x"),
        ("list", "--status", "bogus"),
        ("export", "--format", "xml"),
        ("mark-refunded", "orphan-a", "--tx", "0x1234"),
        ("mark-refunded", "orphan-a"),
        ("frobnicate",),
    ):
        run = await bindu_payments(ledger.env, *args)
        assert run.code == 2, (args, run)


async def test_missing_database_is_one_line(tmp_path: Path) -> None:
    env = clean_env(STORAGE__URL=f"sqlite:///{tmp_path / 'none.db'}")
    line = one_line_error(await bindu_payments(env, "list"))
    assert "no database at" in line
    assert not (tmp_path / "none.db").exists()


# mark-refunded without an RPC URL


async def test_mark_refunded_without_rpc_is_recorded_unchecked(ledger: Ledger) -> None:
    run = await bindu_payments(
        ledger.env,
        "mark-refunded",
        "orphan-a",
        "--tx",
        REFUND_TX.upper().replace("0X", "0x"),
        "--note",
        "sent by hand",
    )
    assert run.code == 0, run.err
    assert "not checked on chain" in run.err.lower() and "X402__RPC_URLS" in run.err
    assert len(run.err.strip().splitlines()) == 1
    assert "payment-refunded" in run.out and REFUND_TX in run.out
    record, task = await stored(ledger.db, "orphan-a")
    assert record is not None and record.status is S.REFUNDED
    assert record.refund is not None
    assert (record.refund.transaction, record.refund.amount) == (REFUND_TX, "10000")
    assert record.refund.checked_on_chain is False and record.refund.note == "sent by hand"
    assert record.receipt == RECEIPT and record.next_check_at is None
    assert task is not None
    assert task.metadata[META_STATUS] == "payment-refunded"
    assert task.metadata[META_REFUND] == {"transaction": REFUND_TX, "amount": "10000"}
    assert task.metadata[META_RECEIPTS] == [RECEIPT.to_json()]

    # Shown, listed and exported as refunded.
    shown = json.loads((await bindu_payments(ledger.env, "show", "orphan-a", "--json")).out)
    assert shown["refund"]["transaction"] == REFUND_TX
    assert shown["refund"]["checkedOnChain"] is False
    exported = await bindu_payments(ledger.env, "export", "--status", "refunded")
    assert [row[1] for row in csv.reader(io.StringIO(exported.out))][1:] == ["orphan-a"]

    # Once refunded, never again; and the same transaction cannot refund another orphan.
    again = one_line_error(
        await bindu_payments(ledger.env, "mark-refunded", "orphan-a", "--tx", REFUND_TX)
    )
    assert "payment-refunded" in again and "only payment-orphaned" in again
    reused = one_line_error(
        await bindu_payments(ledger.env, "mark-refunded", "orphan-b", "--tx", REFUND_TX)
    )
    assert "already the refund of payment orphan-a" in reused
    still, _ = await stored(ledger.db, "orphan-b")
    assert still is not None and still.status is S.ORPHANED and still.refund is None


@pytest.mark.parametrize("payment_id", ["failed-1", "done-1", "nope"])
async def test_mark_refunded_only_orphans(ledger: Ledger, payment_id: str) -> None:
    before = await stored(ledger.db, payment_id)
    line = one_line_error(
        await bindu_payments(ledger.env, "mark-refunded", payment_id, "--tx", REFUND_TX)
    )
    assert ("only payment-orphaned" in line) or ("no payment nope" in line)
    assert await stored(ledger.db, payment_id) == before


# mark-refunded on the devnet: the refund is checked on chain


async def orphan_on_devnet(
    devnet: Devnet, storage: Storage, payer: Any
) -> tuple[PaymentRecord, str]:
    """A real payment whose settle answer was lost, then proven and marked orphaned (what
    the reconciler does); returns the record and the signature of its payload."""
    requirements = requirements_for(devnet)
    paid = await sign(devnet, payer, requirements)
    settled = await settle_directly(devnet, paid, requirements)
    assert settled.success, settled
    record = await store_failed_payment(storage, paid, requirements)
    mined = await devnet.receipt(settled.transaction)
    receipt = Receipt(
        settled.transaction,
        record.network,
        record.payer,
        record.amount,
        record.asset,
        int(mined["blockNumber"], 16),
    )
    task = await storage.get_task(record.task_id)
    assert task is not None
    now = utcnow()
    orphan = await storage.transition_payment(
        record.id,
        {S.FAILED},
        PaymentUpdate(status=S.ORPHANED, receipt=receipt, verdict_at=now, clear_error=True),
        now=now,
        task=with_payment_meta(task, S.ORPHANED, receipt=receipt),
    )
    assert orphan is not None
    return orphan, str(paid.payload["signature"])


async def token_transfer(devnet: Devnet, to: str, amount: int, *, gas: int | None = None) -> str:
    """The payee sends ``amount`` tokens to ``to``; the mined transaction's hash."""
    data = devnet_token.call_data("transfer(address,uint256)", ["address", "uint256"], [to, amount])
    tx = await devnet.send_transaction(devnet.payee, devnet.info.token_address, data, gas=gas)
    await devnet.receipt(tx)
    return tx


@pytest.mark.devnet
async def test_mark_refunded_checks_the_refund_on_chain(devnet: Devnet, tmp_path: Path) -> None:
    db = tmp_path / "bindu.db"
    storage = SqliteStorage(str(db))
    await storage.open()
    payer = await devnet.new_payer(10 * AMOUNT)
    # Three settled payments: the payee holds at least 3 * AMOUNT of this test's money.
    first, sig1 = await orphan_on_devnet(devnet, storage, payer)
    second, sig2 = await orphan_on_devnet(devnet, storage, payer)
    third, sig3 = await orphan_on_devnet(devnet, storage, payer)
    await storage.close()
    secrets = (sig1, sig2, sig3)
    env = clean_env(**devnet.server_env(STORAGE__URL=f"sqlite:///{db}"))
    assert second.receipt is not None

    async def refuse(tx: str, fragment: str, payment: PaymentRecord = first) -> None:
        before = await stored(db, payment.id)
        run = await bindu_payments(env, "mark-refunded", payment.id, "--tx", tx, secrets=secrets)
        line = one_line_error(run)
        assert line.startswith("bindu payments: refused: ") and fragment in line, line
        assert await stored(db, payment.id) == before  # nothing changed
        record, task = before
        assert record is not None and record.status is S.ORPHANED and record.refund is None
        assert task is not None and META_REFUND not in task.metadata

    stranger = Account.create().address
    await refuse(await token_transfer(devnet, stranger, AMOUNT), "not from payTo")
    await refuse(await token_transfer(devnet, payer.address, AMOUNT - 1), "less than")
    # Some other payment: the second orphan's own charge, payer -> payee.
    await refuse(second.receipt.transaction, "not from payTo")
    assert first.receipt is not None
    await refuse(first.receipt.transaction, "the payment itself")
    await refuse("0x" + "77" * 32, "no receipt")
    # A transfer the token refuses (more than the payee holds) reverts on chain.
    await refuse(await token_transfer(devnet, payer.address, 2**255, gas=200_000), "failed")

    before = await devnet.balance_of(payer.address)
    refund_tx = await token_transfer(devnet, payer.address, AMOUNT)
    assert await devnet.balance_of(payer.address) == before + AMOUNT
    mined = await devnet.receipt(refund_tx)
    run = await bindu_payments(
        env, "mark-refunded", first.id, "--tx", refund_tx, "--note", "ticket 42", secrets=secrets
    )
    assert run.code == 0, run.err
    assert run.err == ""  # checked on chain: no warning
    assert "payment-refunded" in run.out and "checked on chain  yes" in run.out

    record, task = await stored(db, first.id)
    assert record is not None and record.status is S.REFUNDED and record.refund is not None
    refund = record.refund
    assert (refund.transaction, refund.amount) == (refund_tx.lower(), str(AMOUNT))
    assert refund.checked_on_chain is True and refund.note == "ticket 42"
    assert refund.block_number == int(mined["blockNumber"], 16)
    assert isinstance(refund.recorded_at, datetime)
    assert record.receipt == first.receipt
    assert task is not None
    assert task.metadata[META_STATUS] == "payment-refunded"
    assert task.metadata[META_REFUND] == {"transaction": refund_tx.lower(), "amount": str(AMOUNT)}
    assert task.metadata[META_RECEIPTS] == [first.receipt.to_json()]

    # The same refund cannot be booked twice, for this orphan or another.
    again = one_line_error(
        await bindu_payments(env, "mark-refunded", first.id, "--tx", refund_tx, secrets=secrets)
    )
    assert "payment-refunded" in again
    reused = one_line_error(
        await bindu_payments(env, "mark-refunded", third.id, "--tx", refund_tx, secrets=secrets)
    )
    assert f"already the refund of payment {first.id}" in reused

    # The ledger: the two orphans left, then the refunded one.
    ledger = await bindu_payments(env, "export", "--format", "json", secrets=secrets)
    assert sorted(item["paymentId"] for item in json.loads(ledger.out)) == sorted(
        [second.id, third.id]
    )
    refunded = await bindu_payments(env, "export", "--status", "refunded", secrets=secrets)
    assert [row[1] for row in csv.reader(io.StringIO(refunded.out))][1:] == [first.id]
    shown = await bindu_payments(env, "show", first.id, secrets=secrets)
    assert shown.code == 0 and refund_tx.lower() in shown.out


@pytest.mark.devnet
async def test_mark_refunded_refuses_a_transfer_older_than_the_payment(
    devnet: Devnet, tmp_path: Path
) -> None:
    db = tmp_path / "bindu.db"
    storage = SqliteStorage(str(db))
    await storage.open()
    payer = await devnet.new_payer(10 * AMOUNT)
    first, sig1 = await orphan_on_devnet(devnet, storage, payer)  # the payee now holds AMOUNT
    # payTo -> payer, the right token and amount, but mined before the next payment.
    early = await token_transfer(devnet, payer.address, AMOUNT)
    second, sig2 = await orphan_on_devnet(devnet, storage, payer)
    await storage.close()
    env = clean_env(**devnet.server_env(STORAGE__URL=f"sqlite:///{db}"))
    assert second.receipt is not None and second.receipt.block_number is not None
    run = await bindu_payments(env, "mark-refunded", second.id, "--tx", early, secrets=(sig1, sig2))
    line = one_line_error(run)
    assert line.startswith(f"bindu payments: refused: transaction {early.lower()} was mined")
    assert f"before the payment's own transfer (block {second.receipt.block_number})" in line
    record, _ = await stored(db, second.id)
    assert record is not None and record.status is S.ORPHANED and record.refund is None
    # The same transfer, mined after the first payment, refunds that one.
    run = await bindu_payments(env, "mark-refunded", first.id, "--tx", early, secrets=(sig1, sig2))
    assert run.code == 0, run.err


@asynccontextmanager
async def ledger_storage(backend: str, tmp_path: Path) -> AsyncIterator[tuple[Storage, str, dict]]:
    """A storage for the race, with the STORAGE__ variables that reach it from a CLI."""
    if backend == "sqlite":
        db = tmp_path / "bindu.db"
        storage: Storage = SqliteStorage(str(db))
        await storage.open()
        try:
            yield storage, f"sqlite:///{db}", {}
        finally:
            await storage.close()
        return
    async with fresh_schema("bindu_refund") as schema:
        storage = PostgresStorage(PG_URL, schema=schema, pool_size=2)
        await storage.open()
        try:
            yield storage, PG_URL, {"STORAGE__SCHEMA": schema}
        finally:
            await storage.close()


@pytest.mark.devnet
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
async def test_two_operators_one_refund_tx_two_orphans(
    devnet: Devnet, tmp_path: Path, backend: str
) -> None:
    """Issue 9, must hold 7: two ``mark-refunded`` processes at once book one refund
    transfer for two orphans of the same payer and amount: exactly one succeeds, the other
    is told which payment holds the transaction, and its orphan is left as it was."""
    payer = await devnet.new_payer(10 * AMOUNT)
    async with ledger_storage(backend, tmp_path) as (storage, url, extra):
        first, sig1 = await orphan_on_devnet(devnet, storage, payer)
        second, sig2 = await orphan_on_devnet(devnet, storage, payer)
        refund_tx = await token_transfer(devnet, payer.address, AMOUNT)  # returns one payment
        env = clean_env(**devnet.server_env(STORAGE__URL=url, **extra))
        runs = await asyncio.gather(
            *(
                bindu_payments(env, "mark-refunded", p.id, "--tx", refund_tx, secrets=(sig1, sig2))
                for p in (first, second)
            )
        )
        winners = [p for p, run in zip((first, second), runs, strict=True) if run.code == 0]
        losers = [(p, run) for p, run in zip((first, second), runs, strict=True) if run.code != 0]
        assert len(winners) == 1 and len(losers) == 1, runs
        [(loser, lost)] = losers
        line = one_line_error(lost)
        assert line == (
            f"bindu payments: transaction {refund_tx.lower()} is already the refund of"
            f" payment {winners[0].id}"
        )
        won = await storage.get_payment(winners[0].id)
        left = await storage.get_payment(loser.id)
        assert won is not None and won.status is S.REFUNDED and won.refund is not None
        assert won.refund.transaction == refund_tx.lower() and won.refund.checked_on_chain
        assert left is not None and left.status is S.ORPHANED and left.refund is None
        task = await storage.get_task(loser.task_id)
        assert task is not None and META_REFUND not in task.metadata
