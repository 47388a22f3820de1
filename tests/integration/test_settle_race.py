"""Issue 9, must hold 4: workers and the reconciler race under `fulfill` with tiny timeouts.

The worker's settle deadline is as short as its settle timeout (no late-answer window, no
margin), so the reconciler takes records over while their /settle is still in flight, and
the agent's budget is short too. Whoever wins each race, the facilitator sees exactly one
/settle per payment, and the agent never runs for more payments than were settled.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bindu.devnet import Devnet, PayingClient
from bindu.payments.records import FINAL_STATUSES, PaymentStatus
from bindu.storage.sqlite import SqliteStorage
from tests.support import agents
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
PAYMENTS = 200
CLIENTS = 8


async def test_worker_and_reconciler_race_settles_each_payment_once(
    devnet: Devnet, faults_reset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs))
    payers = [await devnet.new_payer(PAYMENTS * AMOUNT) for _ in range(CLIENTS)]
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        SERVER__WORKERS="8",
        X402__SETTLE_TIMEOUT_SECONDS="0.2",
        X402__LATE_ANSWER_SECONDS="0",
        X402__RECONCILIATION__POLICY="fulfill",
        X402__RECONCILIATION__INTERVAL_SECONDS="0.1",
        X402__RECONCILIATION__STALE_MARGIN_SECONDS="0",
        X402__RECONCILIATION__LEASE_SECONDS="2",
        X402__RECONCILIATION__COLLECT_AFTER_SECONDS="0",
    )
    storage = SqliteStorage(str(tmp_path / "bindu.db"))
    settles_before = devnet.stats.settle
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(PAYMENTS):
        queue.put_nowait(n)
    task_ids: list[str] = []
    async with inprocess_server(settings_from_env(env), agents.counting, storage=storage) as url:

        async def client(payer) -> None:
            async with PayingClient(url, payer) as paying:
                while not queue.empty():
                    n = queue.get_nowait()
                    reply = await paying.send_text(f"race {n}", blocking=False)
                    assert reply.response.status_code == 200, reply.response.text
                    task_ids.append(reply.response.json()["result"]["id"])

        await asyncio.gather(*(client(payer) for payer in payers))

        async def all_final() -> dict[PaymentStatus, int] | None:
            counts = await storage.count_payments()
            final = sum(counts[s] for s in FINAL_STATUSES)
            return counts if final == PAYMENTS else None

        counts = await until(all_final, timeout=240, interval=0.5, what="every payment final")
    settles = devnet.stats.settle - settles_before
    transfers = sum(
        [len(await devnet.transfer_logs(payer.address, devnet.info.pay_to)) for payer in payers]
    )
    assert len(task_ids) == PAYMENTS
    assert settles == PAYMENTS, counts  # one /settle per payment, never a second
    assert agents.count_runs(str(runs)) <= transfers
    assert counts[PaymentStatus.COMPLETED] <= transfers
    # Every payment whose transfer landed ended delivered or orphaned; nothing else moved.
    assert counts[PaymentStatus.COMPLETED] + counts[PaymentStatus.ORPHANED] == transfers
    assert sum(counts.values()) == PAYMENTS
    print(f"race: {settles} settles for {PAYMENTS} payments; final statuses {counts}")
