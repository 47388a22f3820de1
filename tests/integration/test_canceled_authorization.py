"""Issue 9, must hold 3: the payer cancels its authorization between verify and settle.

``/settle`` fails before any broadcast (the fault switch), then the payer cancels its own
EIP-3009 authorization on chain (``cancelAuthorization``). The SDK facilitator's ``/verify``
now says ``nonce_already_used`` (it cannot tell used from canceled): with an RPC URL the
chain shows ``AuthorizationCanceled`` and the verdict is ``payment-void``; facilitator-only
it is ``payment-unresolved`` with the hint, never ``payment-orphaned`` (no money moved), and
``bindu reconcile --once`` with an RPC URL then proves it void. ``fulfill`` without chain
proof is refused at start-up.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from bindu.devnet import Devnet, PayingClient
from bindu.payments.records import PaymentStatus
from bindu.storage.sqlite import SqliteStorage
from tests.integration.test_reconcile_devnet import paid_server, wait_for_status
from tests.support.servers import REPO

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


@pytest.fixture
async def payer(devnet: Devnet) -> LocalAccount:
    return await devnet.new_payer(10 * AMOUNT)


async def pay_then_cancel(devnet: Devnet, faults, client: PayingClient, payer) -> dict[str, Any]:
    """A paid call whose /settle fails before broadcast, then the payer's cancellation."""
    faults.update({"settle_fail_before_broadcast": True})
    reply = await client.send_text("work I will not pay for")
    task: dict[str, Any] = reply.response.json()["result"]
    assert task["metadata"]["x402.payment.status"] == "payment-failed"
    faults.reset()  # the facilitator is healthy again: still nothing may be charged
    assert reply.payment is not None
    nonce = reply.payment.payload["authorization"]["nonce"]
    await devnet.cancel_authorization(payer, nonce)
    [canceled] = await devnet.authorization_logs(payer.address, nonce)
    assert canceled["event"] == "canceled"
    return task


async def no_money_moved(devnet: Devnet, payer: LocalAccount, before: int) -> None:
    assert await devnet.balance_of(payer.address) == before
    assert await devnet.transfer_logs(payer.address, devnet.info.pay_to) == []


async def stored_record(db, task_id: str):
    storage = SqliteStorage(str(db))
    await storage.open()
    try:
        return await storage.get_payment_for_task(task_id)
    finally:
        await storage.close()


def never_orphaned(record) -> None:
    verdicts = [a.get("verdict") for a in record.answers if a.get("source") == "reconciler"]
    assert "orphaned" not in verdicts, record.answers
    assert record.receipt is None and record.refund is None


async def test_with_rpc_a_canceled_authorization_is_void(devnet, faults_reset, payer, tmp_path):
    before = await devnet.balance_of(payer.address)
    settles = devnet.stats.settle
    async with paid_server(devnet, tmp_path) as url, PayingClient(url, payer) as client:
        task = await pay_then_cancel(devnet, faults_reset, client, payer)
        void = await wait_for_status(client, task["id"], "payment-void", timeout=45)
    assert "canceled by the payer" in void["metadata"]["x402.payment.error"]
    assert "x402.payment.receipts" not in void["metadata"]
    assert void["status"]["state"] == "failed"
    assert devnet.stats.settle == settles + 1  # only the worker's failed attempt
    await no_money_moved(devnet, payer, before)
    record = await stored_record(tmp_path / "bindu.db", task["id"])
    assert record is not None and record.status is PaymentStatus.VOID
    never_orphaned(record)


async def test_facilitator_only_is_unresolved_with_the_hint_then_rejudged_void(
    devnet, faults_reset, payer, tmp_path
):
    before = await devnet.balance_of(payer.address)
    settles = devnet.stats.settle
    async with (
        paid_server(devnet, tmp_path, X402__RPC_URLS="{}") as url,
        PayingClient(url, payer) as client,
    ):
        task = await pay_then_cancel(devnet, faults_reset, client, payer)
        unresolved = await wait_for_status(client, task["id"], "payment-unresolved", timeout=45)
    error = unresolved["metadata"]["x402.payment.error"]
    assert "used or canceled" in error
    assert f"configure X402__RPC_URLS for {devnet.info.network}" in error
    assert "x402.payment.receipts" not in unresolved["metadata"]
    assert devnet.stats.settle == settles + 1
    db = tmp_path / "bindu.db"
    record = await stored_record(db, task["id"])
    assert record is not None and record.status is PaymentStatus.UNRESOLVED
    never_orphaned(record)

    # The operator follows the hint: one pass with an RPC URL proves what happened.
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
    [row] = [line for line in proc.stdout.splitlines() if line.startswith(record.id)]
    assert " void " in row and "canceled by the payer" in row
    assert proc.stdout.splitlines()[-1] == "1 payment(s) examined"
    void = await stored_record(db, task["id"])
    assert void is not None and void.status is PaymentStatus.VOID
    never_orphaned(void)
    await no_money_moved(devnet, payer, before)


async def test_fulfill_without_chain_proof_is_refused_at_start_up(devnet, tmp_path):
    env = {
        **os.environ,
        **devnet.server_env(
            STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
            X402__RPC_URLS="{}",
            X402__RECONCILIATION__POLICY="fulfill",
        ),
    }
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", "bindu.examples.echo:agent"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "bindu: X402__RECONCILIATION__POLICY: fulfill needs chain proof; set X402__RPC_URLS"
        f" for {devnet.info.network} or use the record policy"
    ]
    assert proc.stdout == ""
    assert not (tmp_path / "bindu.db").exists()  # refused before touching storage
