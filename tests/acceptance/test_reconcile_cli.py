"""``bindu reconcile --once`` as a subprocess against a SQLite file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from bindu.a2a import utcnow
from bindu.devnet import Devnet
from bindu.payments.records import PaymentStatus, PaymentUpdate
from bindu.storage.sqlite import SqliteStorage
from tests.support.payments import (
    AMOUNT,
    requirements_for,
    settle_directly,
    sign,
    store_failed_payment,
)
from tests.support.servers import REPO

pytestmark = pytest.mark.devnet


async def test_reconcile_once_prints_and_writes_the_verdicts(devnet: Devnet, tmp_path):
    db = tmp_path / "bindu.db"
    storage = SqliteStorage(str(db))
    await storage.open()
    payer = await devnet.new_payer(10 * AMOUNT)
    requirements = requirements_for(devnet)
    paid = await sign(devnet, payer, requirements)
    settled = await settle_directly(devnet, paid, requirements)
    orphan = await store_failed_payment(storage, paid, requirements)
    waiting = await store_failed_payment(
        storage, await sign(devnet, payer, requirements), requirements
    )
    await storage.close()

    env = {**os.environ, **devnet.server_env(STORAGE__URL=f"sqlite:///{db}")}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bindu.cli.main", "reconcile", "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["payment", "task", "verdict", "attempts", "next", "check", "reason"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert "orphaned" in rows[orphan.id] and "transfer found on chain" in rows[orphan.id]
    assert "retry" in rows[waiting.id] and "unused and still valid" in rows[waiting.id]
    assert lines[-1] == "2 payment(s) examined"

    storage = SqliteStorage(str(db))
    await storage.open()
    try:
        done = await storage.get_payment(orphan.id)
        still = await storage.get_payment(waiting.id)
    finally:
        await storage.close()
    assert done is not None and done.status is PaymentStatus.ORPHANED
    assert done.receipt is not None and done.receipt.transaction == settled.transaction
    assert still is not None and still.status is PaymentStatus.FAILED and still.attempts == 1


async def _unresolved(storage: SqliteStorage, record):
    """What a facilitator-only server leaves: the verdict it could not prove."""
    done = await storage.transition_payment(
        record.id,
        {PaymentStatus.FAILED},
        PaymentUpdate(
            status=PaymentStatus.UNRESOLVED,
            error="facilitator reports the authorization used or canceled",
            verdict_at=utcnow(),
        ),
        now=utcnow(),
    )
    assert done is not None
    return done


async def _reconcile_once(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bindu.cli.main", "reconcile", "--once"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_reconcile_once_rejudges_unresolved_payments_on_chain(devnet: Devnet, tmp_path):
    db = tmp_path / "bindu.db"
    storage = SqliteStorage(str(db))
    await storage.open()
    payer = await devnet.new_payer(10 * AMOUNT)
    requirements = requirements_for(devnet)
    paid = await sign(devnet, payer, requirements)
    settled = await settle_directly(devnet, paid, requirements)
    orphan = await _unresolved(storage, await store_failed_payment(storage, paid, requirements))
    unused = await _unresolved(
        storage,
        await store_failed_payment(storage, await sign(devnet, payer, requirements), requirements),
    )
    await storage.close()

    # Without an RPC URL nothing can prove more than the server already knew: untouched.
    base = {**os.environ, **devnet.server_env(STORAGE__URL=f"sqlite:///{db}")}
    blind = await _reconcile_once({**base, "X402__RPC_URLS": "{}"})
    assert blind.returncode == 0, blind.stderr
    assert blind.stdout.splitlines()[-1] == "0 payment(s) examined"

    proc = await _reconcile_once(base)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:-1]}
    assert " orphaned " in rows[orphan.id] and "transfer found on chain" in rows[orphan.id]
    assert " unresolved " in rows[unused.id]
    assert "still unresolved: authorization unused and still valid" in rows[unused.id]
    assert "not written" not in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 payment(s) examined"

    storage = SqliteStorage(str(db))
    await storage.open()
    try:
        proven = await storage.get_payment(orphan.id)
        kept = await storage.get_payment(unused.id)
        task = await storage.get_task(orphan.task_id)
    finally:
        await storage.close()
    assert proven is not None and proven.status is PaymentStatus.ORPHANED
    assert proven.receipt is not None and proven.receipt.transaction == settled.transaction
    assert proven.error is None and proven.attempts == orphan.attempts + 1
    assert task is not None and task.metadata["x402.payment.status"] == "payment-orphaned"
    assert kept == unused  # anything short of proof leaves the record exactly as it was
