"""The fulfill policy on the devnet: the paid work is delivered late, exactly once."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.postgres import PG_URL, fresh_schema
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


def fulfill_env(devnet: Devnet, **extra: str) -> dict[str, str]:
    return devnet.server_env(
        X402__SETTLE_TIMEOUT_SECONDS="2",
        X402__RECONCILIATION__INTERVAL_SECONDS="0.5",
        X402__RECONCILIATION__POLICY="fulfill",
        **extra,
    )


async def payment_status(client: PayingClient, task_id: str) -> dict:
    return (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]


async def test_orphan_is_fulfilled_with_artifacts(
    devnet: Devnet, faults_reset, tmp_path, monkeypatch
):
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs))
    payer = await devnet.new_payer(10 * AMOUNT)
    env = fulfill_env(devnet, STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db")
    async with (
        inprocess_server(settings_from_env(env), agents.counting) as url,
        PayingClient(url, payer) as client,
    ):
        faults_reset.update({"settle_delay_seconds": 4})
        reply = await client.send_text("deliver me later")
        task = reply.response.json()["result"]
        assert task["status"]["state"] == "failed"  # the worker refused to run unpaid work

        async def completed() -> dict | None:
            current = await payment_status(client, task["id"])
            return current if current["status"]["state"] == "completed" else None

        done = await until(completed, timeout=30, what="late delivery")
    meta = done["metadata"]
    assert meta["x402.payment.status"] == "payment-completed"
    assert meta["x402.payment.recovered"] is True
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert meta["x402.payment.receipts"][0]["transaction"] == log["transaction_hash"]
    assert done["artifacts"][0]["parts"][0]["text"] == "done: deliver me later"
    assert agents.count_runs(str(runs)) == 1


async def test_unused_valid_authorization_is_collected_then_fulfilled(
    devnet: Devnet, faults_reset, tmp_path, monkeypatch
):
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs))
    payer = await devnet.new_payer(10 * AMOUNT)
    before = await devnet.balance_of(payer.address)
    env = fulfill_env(
        devnet,
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__RECONCILIATION__COLLECT_AFTER_SECONDS="0",
    )
    async with (
        inprocess_server(settings_from_env(env), agents.counting) as url,
        PayingClient(url, payer) as client,
    ):
        faults_reset.update({"settle_fail_before_broadcast": True})
        reply = await client.send_text("settle me later")
        task = reply.response.json()["result"]
        assert task["metadata"]["x402.payment.status"] == "payment-failed"
        faults_reset.reset()

        async def completed() -> dict | None:
            current = await payment_status(client, task["id"])
            return current if current["status"]["state"] == "completed" else None

        done = await until(completed, timeout=30, what="late settle and delivery")
    assert done["metadata"]["x402.payment.status"] == "payment-completed"
    assert await devnet.balance_of(payer.address) == before - AMOUNT
    assert agents.count_runs(str(runs)) == 1


@pytest.mark.postgres
async def test_two_replicas_fulfil_once(devnet: Devnet, faults_reset, tmp_path, monkeypatch):
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs))
    payer = await devnet.new_payer(20 * AMOUNT)
    async with fresh_schema() as schema, AsyncExitStack() as stack:
        env = fulfill_env(devnet, STORAGE__URL=PG_URL, STORAGE__SCHEMA=schema)
        urls = [
            await stack.enter_async_context(
                inprocess_server(settings_from_env(env), agents.counting)
            )
            for _ in range(2)
        ]
        client = await stack.enter_async_context(PayingClient(urls[0], payer))
        faults_reset.update({"settle_delay_seconds": 4})
        ids = [
            (await client.send_text(f"orphan {i}")).response.json()["result"]["id"]
            for i in range(3)
        ]
        faults_reset.reset()

        async def all_completed() -> bool:
            states = [(await payment_status(client, i))["status"]["state"] for i in ids]
            return states == ["completed"] * 3

        await until(all_completed, timeout=45, what="three late deliveries")
    assert agents.count_runs(str(runs)) == 3  # one run per payment, across both replicas
