"""The reconciler end to end on the devnet: a real server, real faults, real verdicts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
INTERVAL = 1.0


@asynccontextmanager
async def paid_server(devnet: Devnet, tmp_path, **env: str) -> AsyncIterator[str]:
    defaults = {
        "STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db",
        "X402__RECONCILIATION__INTERVAL_SECONDS": str(INTERVAL),
        "X402__SETTLE_TIMEOUT_SECONDS": "2",
    }
    full = devnet.server_env(**{**defaults, **env})
    async with inprocess_server(settings_from_env(full), agents.counting) as url:
        yield url


async def task_of(client: PayingClient, task_id: str) -> dict[str, Any]:
    return (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]


async def wait_for_status(client: PayingClient, task_id: str, status: str, timeout: float = 30):
    async def reached() -> dict[str, Any] | None:
        task = await task_of(client, task_id)
        return task if task["metadata"].get("x402.payment.status") == status else None

    return await until(reached, timeout=timeout, interval=0.1, what=f"payment {status}")


async def replace_with_noop(devnet: Devnet, tx_hash: str) -> None:
    tx = await devnet.rpc.call("eth_getTransactionByHash", tx_hash)
    sender = tx["from"]
    await devnet.rpc.call("anvil_impersonateAccount", sender)
    try:
        await devnet.rpc.call(
            "eth_sendTransaction",
            {
                "from": sender,
                "to": sender,
                "value": "0x0",
                "nonce": tx["nonce"],
                "gas": hex(21_000),
                "gasPrice": hex(int(tx["gasPrice"], 16) * 2),
            },
        )
    finally:
        await devnet.rpc.call("anvil_stopImpersonatingAccount", sender)


@pytest.fixture
async def payer(devnet: Devnet) -> LocalAccount:
    return await devnet.new_payer(10 * AMOUNT)


async def test_lost_settle_answer_becomes_orphaned_with_the_real_hash(
    devnet, faults_reset, payer, tmp_path
):
    faults_reset.update({"settle_delay_seconds": 4})
    settles_before = devnet.stats.settle
    async with paid_server(devnet, tmp_path) as url, PayingClient(url, payer) as client:
        reply = await client.send_text("lost answer")
        task = reply.response.json()["result"]
        assert task["metadata"]["x402.payment.status"] == "payment-failed"
        failed_at = time.monotonic()
        orphaned = await wait_for_status(client, task["id"], "payment-orphaned")
        detected_after = time.monotonic() - failed_at
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    [receipt] = orphaned["metadata"]["x402.payment.receipts"]
    assert receipt["transaction"] == log["transaction_hash"]
    assert receipt["blockNumber"] == log["block_number"]
    assert receipt["amount"] == str(AMOUNT)
    assert orphaned["status"]["state"] == "failed"  # the work was never delivered
    assert "x402.payment.error" not in orphaned["metadata"]
    # One interval plus a few seconds (the settle delay keeps the facilitator busy meanwhile).
    assert detected_after < INTERVAL + 5
    # The reconciler never called /settle: the only settle is the worker's.
    assert devnet.stats.settle == settles_before + 1


async def test_facilitator_only_lost_answer_is_unresolved_never_guessed(
    devnet, faults_reset, payer, tmp_path
):
    # The transfer landed but its answer was lost, and no chain is configured: /verify
    # says "used", which a canceled authorization says too. Not proof: unresolved, with
    # the hint, and no receipt naming a transaction nobody saw.
    faults_reset.update({"settle_delay_seconds": 4})
    verifies_before = devnet.stats.verify
    async with (
        # No late-answer window either: the answer is lost for good.
        paid_server(devnet, tmp_path, X402__RPC_URLS="{}", X402__LATE_ANSWER_SECONDS="0") as url,
        PayingClient(url, payer) as client,
    ):
        reply = await client.send_text("no rpc")
        task_id = reply.response.json()["result"]["id"]
        unresolved = await wait_for_status(client, task_id, "payment-unresolved")
    assert "x402.payment.receipts" not in unresolved["metadata"]
    assert "X402__RPC_URLS" in unresolved["metadata"]["x402.payment.error"]
    assert devnet.stats.verify > verifies_before + 1  # paywall + reconciler probes


@pytest.mark.parametrize("pending_as_500", [False, True])
async def test_settlement_pending_then_mined_is_orphaned_with_that_hash(
    devnet, faults_reset, payer, tmp_path, pending_as_500
):
    faults_reset.update({"pending_as_http_500": pending_as_500})
    async with (
        paid_server(devnet, tmp_path, X402__SETTLE_TIMEOUT_SECONDS="12") as url,
        PayingClient(url, payer) as client,
    ):
        await devnet.hold_mining()
        try:
            reply = await client.send_text("pending")
            task = reply.response.json()["result"]
            meta = task["metadata"]
            assert meta["x402.payment.status"] == "payment-failed"
            assert meta["x402.payment.error"] == "settlement_pending"
            settles = devnet.stats.settle
            pending_hash = devnet.stats.settle_transactions[-1]
            # While the transfer is unmined the reconciler keeps waiting: nothing is final.
            await client.signed_in_rpc("tasks/get", {"id": task["id"]})
            assert (await task_of(client, task["id"]))["metadata"][
                "x402.payment.status"
            ] == "payment-failed"
        finally:
            await devnet.release_mining()
        orphaned = await wait_for_status(client, task["id"], "payment-orphaned", timeout=40)
    [receipt] = orphaned["metadata"]["x402.payment.receipts"]
    assert receipt["transaction"] == pending_hash
    assert devnet.stats.settle == settles  # resumed by reading the chain, not by /settle
    assert len(await devnet.transfer_logs(payer.address, devnet.info.pay_to)) == 1


async def test_pending_never_mined_and_expired_is_void(devnet, faults_reset, payer, tmp_path):
    before = await devnet.balance_of(payer.address)
    async with (
        paid_server(
            devnet, tmp_path, X402__SETTLE_TIMEOUT_SECONDS="12", X402__MAX_TIMEOUT_SECONDS="15"
        ) as url,
        PayingClient(url, payer) as client,
    ):
        await devnet.hold_mining()
        try:
            reply = await client.send_text("dropped")
            task = reply.response.json()["result"]
            assert task["metadata"]["x402.payment.error"] == "settlement_pending"
            # The facilitator replaces its stuck broadcast with a no-op at the same nonce
            # (as operators do): the transfer will never be mined.
            await replace_with_noop(devnet, devnet.stats.settle_transactions[-1])
        finally:
            await devnet.release_mining()
        void = await wait_for_status(client, task["id"], "payment-void", timeout=45)
    assert "expired unused" in void["metadata"]["x402.payment.error"]
    assert await devnet.balance_of(payer.address) == before


async def test_settle_failed_before_broadcast_is_void_and_costs_nothing(
    devnet, faults_reset, payer, tmp_path
):
    faults_reset.update({"settle_fail_before_broadcast": True})
    before = await devnet.balance_of(payer.address)
    sent = await devnet.tx_count(devnet.info.facilitator_address)
    settles = devnet.stats.settle
    async with (
        paid_server(devnet, tmp_path, X402__MAX_TIMEOUT_SECONDS="12") as url,
        PayingClient(url, payer) as client,
    ):
        reply = await client.send_text("never broadcast")
        task = reply.response.json()["result"]
        assert task["metadata"]["x402.payment.status"] == "payment-failed"
        faults_reset.reset()  # the facilitator is healthy again: still, nothing may be charged
        void = await wait_for_status(client, task["id"], "payment-void", timeout=45)
    assert void["status"]["state"] == "failed"
    assert await devnet.balance_of(payer.address) == before
    assert await devnet.tx_count(devnet.info.facilitator_address) == sent
    assert devnet.stats.settle == settles + 1  # only the worker's failed attempt
    assert await devnet.transfer_logs(payer.address, devnet.info.pay_to) == []
