"""A real `bindu serve` killed after its settle succeeded, before the agent delivered
(failpoint `after-settled`): after a restart the reconciler finds the payment once the
agent's time budget is over and orphans it (reason: work not delivered), with one webhook
call; the agent never runs (SQLite and Postgres)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.paid import storage_env
from tests.support.receiver import webhook_receiver
from tests.support.servers import ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sigkill_after_settle_is_orphaned_after_the_agent_budget(
    devnet: Devnet, tmp_path: Path, kind: str
) -> None:
    payer = await devnet.new_payer(10 * AMOUNT)
    runs_file = tmp_path / "runs.txt"
    reached = tmp_path / "failpoint"
    settles = devnet.stats.settle
    async with storage_env(kind, tmp_path) as store, webhook_receiver() as hook:
        env = devnet.server_env(
            SERVER__AGENT_TIMEOUT_SECONDS="3",
            X402__RECONCILIATION__INTERVAL_SECONDS="0.5",
            X402__RECONCILIATION__STALE_MARGIN_SECONDS="1",
            X402__RECONCILIATION__WEBHOOK_URL=hook.url,
            **store,
        )
        env[agents.RUNS_FILE_ENV] = str(runs_file)
        first = ServerProcess(
            "tests.support.agents:counting",
            {**env, "BINDU_FAILPOINTS": "after-settled", "BINDU_FAILPOINT_FILE": str(reached)},
            tmp_path / "a.log",
        )
        await first.start()
        try:
            async with PayingClient(first.url, payer) as client:
                reply = await client.send_text("crash me", blocking=False)
                task_id = reply.response.json()["result"]["id"]

            async def at_failpoint() -> bool:
                return reached.exists() and reached.read_text() == "after-settled"

            await until(at_failpoint, timeout=30, what="the after-settled failpoint")
        finally:
            first.kill()
        [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)

        second = await ServerProcess(
            "tests.support.agents:counting", env, tmp_path / "b.log"
        ).start()
        try:
            async with PayingClient(second.url, payer) as client:
                # Paid, work running: the public status is completed (the agent's budget
                # has not run out yet, so nobody has judged it).
                task = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]
                assert task["metadata"]["x402.payment.status"] in (
                    "payment-completed",
                    "payment-orphaned",
                )

                async def verdict() -> dict | None:
                    got = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()[
                        "result"
                    ]
                    status = got["metadata"].get("x402.payment.status")
                    return got if status == "payment-orphaned" else None

                task = await until(verdict, timeout=40, interval=0.2, what="orphaned verdict")

                async def alerted() -> bool:
                    return len(hook.events) >= 1

                await until(alerted, timeout=20, what="the webhook")
        finally:
            second.stop()
    assert task["status"]["state"] == "failed"
    assert task["metadata"]["x402.payment.error"].startswith("work not delivered")
    [receipt] = task["metadata"]["x402.payment.receipts"]
    assert receipt["transaction"] == log["transaction_hash"]
    [event] = hook.events
    assert event["event"] == "payment.orphaned" and event["transaction"] == log["transaction_hash"]
    assert agents.count_runs(str(runs_file)) == 0  # never re-run: the agent is not idempotent
    assert devnet.stats.settle == settles + 1
