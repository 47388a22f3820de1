"""A server killed with SIGKILL while /settle is in flight: after a restart the payment
still reaches its right verdict (SQLite and Postgres)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.postgres import PG_URL, fresh_schema
from tests.support.servers import ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


@asynccontextmanager
async def storage_env(kind: str, tmp_path) -> AsyncIterator[dict[str, str]]:
    if kind == "sqlite":
        yield {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db"}
        return
    async with fresh_schema() as schema:
        yield {"STORAGE__URL": PG_URL, "STORAGE__SCHEMA": schema}


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sigkill_during_settle_then_restart(devnet: Devnet, faults_reset, tmp_path, kind):
    payer = await devnet.new_payer(10 * AMOUNT)
    runs_file = tmp_path / "runs.txt"
    async with storage_env(kind, tmp_path) as store:
        env = devnet.server_env(
            X402__SETTLE_TIMEOUT_SECONDS="8",
            # The worker holds its settle until timeout + late-answer window + margin.
            X402__LATE_ANSWER_SECONDS="2",
            X402__RECONCILIATION__INTERVAL_SECONDS="1",
            X402__RECONCILIATION__STALE_MARGIN_SECONDS="1",
            **store,
        )
        env[agents.RUNS_FILE_ENV] = str(runs_file)
        faults_reset.update({"settle_delay_seconds": 60})
        settles = devnet.stats.settle
        first = await ServerProcess(
            "tests.support.agents:counting", env, tmp_path / "a.log"
        ).start()
        try:
            async with PayingClient(first.url, payer) as client:
                reply = await client.send_text("crash me", blocking=False)
                task_id = reply.response.json()["result"]["id"]

            async def transfer_landed() -> bool:
                logs = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
                return devnet.stats.settle == settles + 1 and len(logs) == 1

            await until(transfer_landed, timeout=20, what="the settle to land on chain")
        finally:
            first.kill()  # /settle is still in flight: its answer will never be read
        faults_reset.reset()
        second = await ServerProcess(
            "tests.support.agents:counting", env, tmp_path / "b.log"
        ).start()
        try:
            async with PayingClient(second.url, payer) as client:

                async def verdict() -> dict | None:
                    got = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()[
                        "result"
                    ]
                    status = got["metadata"].get("x402.payment.status")
                    return got if status == "payment-orphaned" else None

                task = await until(verdict, timeout=40, interval=0.2, what="orphaned verdict")
        finally:
            second.stop()
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    [receipt] = task["metadata"]["x402.payment.receipts"]
    assert receipt["transaction"] == log["transaction_hash"]
    assert task["status"]["state"] == "failed"
    assert (
        "server stopped during payment settlement" in task["status"]["message"]["parts"][0]["text"]
    )
    assert agents.count_runs(str(runs_file)) == 0  # paid, not delivered: recorded, not re-run
    assert devnet.stats.settle == settles + 1  # the reconciler never re-sent /settle
