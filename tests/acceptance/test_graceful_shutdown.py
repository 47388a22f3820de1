"""SIGTERM on a real `bindu serve` (issue 9, must hold 2): new work is refused with 503 +
Retry-After while runs in flight drain for SERVER__SHUTDOWN_GRACE_SECONDS; a paid run is
delivered within the grace, or ends orphaned (with the transfer's hash) and alerted
before the process exits; an unpaid one ends failed with a reason."""

from __future__ import annotations

import signal

import httpx
import pytest

from bindu.a2a import TaskState
from bindu.devnet import Devnet, PayingClient
from bindu.payments.records import PaymentStatus
from tests.support import agents
from tests.support.paid import reading
from tests.support.receiver import webhook_receiver
from tests.support.servers import ServerProcess, rpc, text_message
from tests.support.waiting import until

AMOUNT = 10_000


async def exited(proc: ServerProcess) -> bool:
    assert proc.proc is not None
    return proc.proc.poll() is not None


async def run_count(path) -> int:
    return agents.count_runs(str(path))


async def sigterm_during_paid_run(devnet: Devnet, tmp_path, agent_seconds: str, grace: str):
    payer = await devnet.new_payer(10 * AMOUNT)
    runs_file = tmp_path / "runs.txt"
    async with webhook_receiver() as hook:
        env = devnet.server_env(
            STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
            SERVER__SHUTDOWN_GRACE_SECONDS=grace,
            X402__RECONCILIATION__WEBHOOK_URL=hook.url,
        )
        env[agents.RUNS_FILE_ENV] = str(runs_file)
        env["BINDU_TEST_AGENT_SECONDS"] = agent_seconds
        server = await ServerProcess("tests.support.agents:slow", env, tmp_path / "s.log").start()
        try:
            async with PayingClient(server.url, payer) as client:
                reply = await client.send_text("deliver me", blocking=False)
                task_id = reply.response.json()["result"]["id"]
            await until(lambda: run_count(runs_file), timeout=20, what="the agent to start")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient(timeout=10) as http:

                async def refused() -> httpx.Response | None:
                    reply = await rpc(http, server.url, "message/send", text_message("more?"))
                    return reply if reply.status_code == 503 else None

                busy = await until(refused, timeout=10, what="503 while draining")
                health = await http.get(server.url + "/health")
            await until(lambda: exited(server), timeout=40, what="the server to exit")
        finally:
            server.kill()
        async with reading(env) as storage:
            task = await storage.get_task(task_id)
            payment = await storage.get_payment_for_task(task_id)
        events = list(hook.events)
    assert busy.headers["Retry-After"].isdigit()
    assert busy.json()["error"]["code"] == -32012
    assert "shutting down" in busy.json()["error"]["message"]
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert task is not None and payment is not None
    assert agents.count_runs(str(runs_file)) == 1
    return task, payment, events, payer


@pytest.mark.devnet
async def test_sigterm_paid_run_delivered_within_grace(devnet: Devnet, faults_reset, tmp_path):
    task, payment, events, _ = await sigterm_during_paid_run(devnet, tmp_path, "2", "30")
    assert task.state is TaskState.COMPLETED
    assert payment.status is PaymentStatus.COMPLETED
    assert task.artifacts and events == []


@pytest.mark.devnet
async def test_sigterm_paid_run_past_grace_is_orphaned_and_alerted(
    devnet: Devnet, faults_reset, tmp_path
):
    task, payment, events, payer = await sigterm_during_paid_run(devnet, tmp_path, "60", "0.5")
    [transfer] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert payment.status is PaymentStatus.ORPHANED
    assert payment.receipt is not None
    assert payment.receipt.transaction == transfer["transaction_hash"]
    assert task.state is TaskState.FAILED
    assert task.metadata["x402.payment.status"] == "payment-orphaned"
    reason = "server shut down before the work was delivered"
    assert task.status.message is not None and reason in str(task.status.message.parts[0])
    # The alert went out before the process exited, exactly once.
    [event] = events
    assert event["event"] == "payment.orphaned" and event["paymentId"] == payment.id
    assert event["transaction"] == transfer["transaction_hash"]


async def test_sigterm_unpaid_run_past_grace_fails_with_a_reason(tmp_path):
    env = {
        "STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db",
        "SERVER__SHUTDOWN_GRACE_SECONDS": "0.5",
        "BINDU_TEST_AGENT_SECONDS": "60",
        agents.RUNS_FILE_ENV: str(tmp_path / "runs.txt"),
    }
    server = await ServerProcess("tests.support.agents:slow", env, tmp_path / "s.log").start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            reply = await rpc(
                http,
                server.url,
                "message/send",
                text_message("x", configuration={"blocking": False}),
            )
            task_id = reply.json()["result"]["id"]
            await until(
                lambda: run_count(tmp_path / "runs.txt"), timeout=20, what="the agent to start"
            )
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            await until(lambda: exited(server), timeout=30, what="the server to exit")
    finally:
        server.kill()
    async with reading(env) as storage:
        task = await storage.get_task(task_id)
    assert task is not None and task.state is TaskState.FAILED
    assert task.status.message is not None
    assert "server shut down before the work was finished" in str(task.status.message.parts[0])
