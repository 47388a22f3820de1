"""Two servers on one Postgres: a payment works once, whichever replica it is sent to."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from bindu.devnet import Devnet, PayingClient
from tests.support import agents
from tests.support.postgres import PG_URL, fresh_schema
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env

pytestmark = [pytest.mark.devnet, pytest.mark.postgres]

AMOUNT = 10_000


async def test_replay_to_another_replica_is_refused(devnet: Devnet, tmp_path, monkeypatch):
    runs_file = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs_file))
    payer = await devnet.new_payer(10 * AMOUNT)
    async with fresh_schema() as schema, AsyncExitStack() as stack:
        env = devnet.server_env(
            STORAGE__URL=PG_URL, STORAGE__SCHEMA=schema, X402__RECONCILIATION__ENABLED="false"
        )
        urls = [
            await stack.enter_async_context(
                inprocess_server(settings_from_env(env), agents.counting)
            )
            for _ in range(2)
        ]
        a, b = [await stack.enter_async_context(PayingClient(url, payer)) for url in urls]

        first = await a.send_text("pay once")
        assert first.response.json()["result"]["status"]["state"] == "completed"
        replay = await b.send_text("pay again elsewhere", payment=first.payment)
        assert replay.response.status_code == 402
        assert "replay" in replay.response.json()["error"]

        # The same fresh payment raced to both replicas at once: exactly one wins.
        payment = await a.sign(await a.payment_required())
        raced = await asyncio.gather(
            a.send_text("race", payment=payment), b.send_text("race", payment=payment)
        )
        codes = sorted(r.response.status_code for r in raced)
        assert codes == [200, 402]

    assert agents.count_runs(str(runs_file)) == 2
    assert len(await devnet.transfer_logs(payer.address, devnet.info.pay_to)) == 2
