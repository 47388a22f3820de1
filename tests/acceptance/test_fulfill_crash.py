"""SIGKILL during a fulfilment: the agent never runs twice for one payment."""

from __future__ import annotations

import pytest

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.servers import ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


async def test_sigkill_during_fulfilment_never_runs_the_agent_twice(
    devnet: Devnet, faults_reset, tmp_path
):
    runs = tmp_path / "runs.txt"
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__SETTLE_TIMEOUT_SECONDS="2",
        X402__RECONCILIATION__INTERVAL_SECONDS="0.5",
        X402__RECONCILIATION__POLICY="fulfill",
        X402__RECONCILIATION__FULFIL_TIMEOUT_SECONDS="2",
    )
    env[agents.RUNS_FILE_ENV] = str(runs)
    env["BINDU_TEST_AGENT_SECONDS"] = "60"  # the agent is still busy when the server dies
    faults_reset.update({"settle_delay_seconds": 4})
    first = await ServerProcess("tests.support.agents:slow", env, tmp_path / "a.log").start()
    try:
        async with PayingClient(first.url, payer) as client:
            reply = await client.send_text("slow work")
            task_id = reply.response.json()["result"]["id"]
            assert reply.response.json()["result"]["status"]["state"] == "failed"

        async def agent_started() -> bool:
            return agents.count_runs(str(runs)) == 1

        await until(agent_started, timeout=30, what="the fulfilment's agent run")
    finally:
        first.kill()
    faults_reset.reset()
    second = await ServerProcess("tests.support.agents:slow", env, tmp_path / "b.log").start()
    try:
        async with PayingClient(second.url, payer) as client:

            async def recorded() -> dict | None:
                got = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]
                status = got["metadata"].get("x402.payment.status")
                return got if status == "payment-orphaned" else None

            task = await until(recorded, timeout=40, interval=0.2, what="orphaned after crash")
    finally:
        second.stop()
    assert agents.count_runs(str(runs)) == 1
    assert task["status"]["state"] == "failed"
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert task["metadata"]["x402.payment.receipts"][0]["transaction"] == log["transaction_hash"]
