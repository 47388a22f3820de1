"""After settle is not the end (DESIGN §7): money moved and the work is not delivered yet.

Whatever stops the work there (the agent fails or overruns its budget, the process dies)
ends in delivered work or an orphan verdict with an alert, never a `working` task beside a
completed payment; a non-idempotent agent never runs twice.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bindu.a2a import Task, TaskState, utcnow
from bindu.devnet import Devnet, PayingClient
from bindu.metrics import PAYMENTS
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.records import META_RECOVERED, PaymentStatus
from bindu.reconcile.service import Reconciler
from bindu.server.embedded import bind, serving
from bindu.storage.base import Storage
from bindu.storage.memory import MemoryStorage
from tests.support import agents
from tests.support.payments import (
    requirements_for,
    settle_directly,
    sign,
    store_settled_payment,
)
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
S = PaymentStatus


@asynccontextmanager
async def webhook() -> AsyncIterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return Response(status_code=204)

    sock = bind()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    async with serving(app, sock, lifespan="off"):
        yield url, received


async def test_agent_failure_after_settle_is_orphaned_and_alerted(
    devnet: Devnet, tmp_path, monkeypatch
) -> None:
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv(agents.RUNS_FILE_ENV, str(runs))
    payer = await devnet.new_payer(10 * AMOUNT)
    async with webhook() as (hook_url, received):
        env = devnet.server_env(
            STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
            X402__RECONCILIATION__WEBHOOK_URL=hook_url,
        )
        async with (
            inprocess_server(settings_from_env(env), agents.failing) as url,
            PayingClient(url, payer) as client,
        ):
            task = (await client.send_text("break")).response.json()["result"]

            async def alerted() -> bool:
                return len(received) >= 1

            await until(alerted, timeout=20, what="the orphan's webhook")
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert task["status"]["state"] == "failed"
    meta = task["metadata"]
    assert meta["x402.payment.status"] == "payment-orphaned"
    assert meta["x402.payment.error"].startswith("work not delivered: agent failed")
    assert meta["x402.payment.receipts"][0]["transaction"] == log["transaction_hash"]
    [event] = received
    assert event["event"] == "payment.orphaned" and event["taskId"] == task["id"]
    assert event["transaction"] == log["transaction_hash"]
    assert event["reason"].startswith("work not delivered")
    assert agents.count_runs(str(runs)) == 1


async def test_agent_overrunning_its_budget_is_orphaned(
    devnet: Devnet, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("BINDU_TEST_AGENT_SECONDS", "5")
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        SERVER__AGENT_TIMEOUT_SECONDS="0.5",
    )
    async with (
        inprocess_server(settings_from_env(env), agents.slow) as url,
        PayingClient(url, payer) as client,
    ):
        task = (await client.send_text("too slow")).response.json()["result"]
    assert task["status"]["state"] == "failed"
    assert task["metadata"]["x402.payment.status"] == "payment-orphaned"
    assert "time budget of 0.5s" in task["metadata"]["x402.payment.error"]
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert task["metadata"]["x402.payment.receipts"][0]["transaction"] == log["transaction_hash"]


async def test_a_paid_run_shows_completed_only_with_its_work(devnet: Devnet, tmp_path) -> None:
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db")
    settings = settings_from_env(env)
    async with (
        inprocess_server(settings, agents.counting) as url,
        PayingClient(url, payer) as client,
    ):
        task = (await client.send_text("work")).response.json()["result"]
    assert task["status"]["state"] == "completed" and task["artifacts"]
    assert task["metadata"]["x402.payment.status"] == "payment-completed"


# A settled payment whose process died while its agent ran


async def settled_and_dead(devnet: Devnet, storage: Storage, *, budget_left: float = 0.0):
    """A real payment settled on chain whose worker died after writing payment-settled."""
    payer = await devnet.new_payer(10 * AMOUNT)
    requirements = requirements_for(devnet)
    payload = await sign(devnet, payer, requirements)
    settled = await settle_directly(devnet, payload, requirements)
    assert settled.success
    record = await store_settled_payment(
        storage,
        payload,
        requirements,
        settled.transaction,
        now=utcnow() + timedelta(seconds=budget_left),
    )
    return record, settled.transaction


def reconciler(
    devnet: Devnet,
    storage: Storage,
    *,
    policy: str = "record",
    idempotent: bool = False,
    fulfil=None,
    seen: list[Task] | None = None,
) -> Reconciler:
    env = devnet.server_env(X402__RECONCILIATION__POLICY=policy)
    settings = settings_from_env(env)
    return Reconciler(
        storage,
        settings.x402,
        facilitator=make_facilitator_client(settings.x402),
        fulfil=fulfil,
        notify=(seen.append if seen is not None else None),
        agent_idempotent=idempotent,
    )


async def test_record_orphans_a_settled_payment_after_the_agents_budget(devnet: Devnet) -> None:
    storage = MemoryStorage()
    record, tx = await settled_and_dead(devnet, storage, budget_left=30)
    seen: list[Task] = []
    before = PAYMENTS.labels(S.ORPHANED.value)._value.get()
    service = reconciler(devnet, storage, seen=seen)
    try:
        # Still inside the worker's budget: the reconciler leaves it alone.
        assert await service.run_pass() == []
        assert record.next_check_at is not None
        [outcome] = await service.run_pass(now=record.next_check_at)
    finally:
        await service.close()
    assert outcome.written and outcome.decision.verdict.value == "orphaned"
    done = await storage.get_payment(record.id)
    assert done is not None and done.status is S.ORPHANED
    assert done.error is not None and done.error.startswith("work not delivered")
    assert done.receipt is not None and done.receipt.transaction == tx
    task = await storage.get_task(record.task_id)
    assert task is not None and task.state is TaskState.FAILED
    assert task.metadata["x402.payment.status"] == "payment-orphaned"
    assert [t.id for t in seen] == [record.task_id]
    # The operator's webhook, written with the verdict (the outbox delivers it).
    events = await storage.list_outbox(task_id=record.task_id)
    hooks = [e for e in events if e.kind == "webhook"]
    assert [h.body["event"] for h in hooks] == ["payment.orphaned"]
    assert hooks[0].body["transaction"] == tx
    assert hooks[0].body["reason"].startswith("work not delivered")
    assert PAYMENTS.labels(S.ORPHANED.value)._value.get() == before + 1


async def test_fulfill_without_idempotence_never_reruns_the_agent(devnet: Devnet) -> None:
    storage = MemoryStorage()
    record, _ = await settled_and_dead(devnet, storage)
    runs: list[str] = []

    async def fulfil(task: Task) -> Task:
        runs.append(task.id)
        return task.with_status(TaskState.COMPLETED)

    service = reconciler(devnet, storage, policy="fulfill", fulfil=fulfil)
    try:
        [outcome] = await service.run_pass()
    finally:
        await service.close()
    assert outcome.decision.verdict.value == "orphaned"
    done = await storage.get_payment(record.id)
    assert done is not None and done.status is S.ORPHANED
    assert runs == []


async def test_fulfill_reruns_an_idempotent_agent_exactly_once(devnet: Devnet) -> None:
    storage = MemoryStorage()
    record, tx = await settled_and_dead(devnet, storage)
    runs: list[str] = []

    async def fulfil(task: Task) -> Task:
        runs.append(task.id)
        return task.with_status(TaskState.COMPLETED)

    services = [
        reconciler(devnet, storage, policy="fulfill", idempotent=True, fulfil=fulfil)
        for _ in range(2)
    ]
    try:
        for _ in range(3):
            for service in services:
                await service.run_pass()
    finally:
        for service in services:
            await service.close()
    done = await storage.get_payment(record.id)
    assert done is not None and done.status is S.COMPLETED
    assert done.receipt is not None and done.receipt.transaction == tx
    task = await storage.get_task(record.task_id)
    assert task is not None and task.state is TaskState.COMPLETED
    assert task.metadata[META_RECOVERED] is True
    assert runs == [record.task_id]


# The late answer (DESIGN §7)


async def test_a_late_settle_answer_is_kept_and_proves_the_orphan_without_rpc(
    devnet: Devnet, faults_reset, tmp_path
) -> None:
    payer = await devnet.new_payer(10 * AMOUNT)
    storage = MemoryStorage()
    env = devnet.server_env(
        X402__RPC_URLS=None,  # facilitator-only: the late answer is the only proof
        X402__SETTLE_TIMEOUT_SECONDS="1",
        X402__LATE_ANSWER_SECONDS="20",
        X402__RECONCILIATION__INTERVAL_SECONDS="0.5",
    )
    async with (
        inprocess_server(settings_from_env(env), agents.counting, storage=storage) as url,
        PayingClient(url, payer) as client,
    ):
        faults_reset.update({"settle_delay_seconds": 3})
        task = (await client.send_text("late")).response.json()["result"]
        assert task["metadata"]["x402.payment.status"] == "payment-failed"
        faults_reset.reset()

        async def verdict() -> dict | None:
            got = (await client.signed_in_rpc("tasks/get", {"id": task["id"]})).json()["result"]
            return got if got["metadata"]["x402.payment.status"] == "payment-orphaned" else None

        done = await until(verdict, timeout=30, what="the orphan proven by the late answer")
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert done["metadata"]["x402.payment.receipts"][0]["transaction"] == log["transaction_hash"]
    record = await storage.get_payment_for_task(task["id"])
    assert record is not None and record.status is S.ORPHANED
    [late] = [a for a in record.answers if a.get("late")]
    assert late["source"] == "settle" and late["response"]["success"] is True
    assert late["response"]["transaction"] == log["transaction_hash"]
    # Internal markers stay ours: the facilitator's words sit under their own key.
    timed_out = [a for a in record.answers if a.get("source") == "settle" and not a.get("late")]
    assert timed_out and timed_out[0]["answered"] is False
