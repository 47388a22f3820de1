"""The crash matrix (issue 9, must hold 1): a real `bindu serve` is SIGKILLed at each step
of a paid request, on SQLite and on Postgres, then restarted. Whatever the step, the
payment ends in exactly one of

- delivered: task ``completed``, payment ``payment-completed``, the agent ran once;
- orphaned: ``payment-orphaned`` with the transfer's hash, one webhook call;
- void: nothing moved (the payer's balance is untouched),

within the configured deadlines (no task left submitted or working), with at most one
``/settle`` for the payment (the facilitator's counter) and no more agent runs than
settled payments (the agent writes a runs file).

Steps are killed at failpoints (bindu.failpoints) or while the devnet facilitator holds an
answer back (verify/settle delay faults), or while a slow agent runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bindu.a2a import TaskState
from bindu.devnet import Devnet, PayingClient
from bindu.failpoints import ENABLED_VAR, FILE_VAR
from bindu.payments.records import PaymentStatus
from tests.support import agents
from tests.support.paid import payment_of, reading, storage_env
from tests.support.receiver import WebhookReceiver, webhook_receiver
from tests.support.servers import ServerProcess
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
# Every deadline is small, so "resolved within the deadlines" is a short wait.
SETTINGS = {
    "X402__SETTLE_TIMEOUT_SECONDS": "3",
    "X402__VERIFY_TIMEOUT_SECONDS": "3",
    "X402__LATE_ANSWER_SECONDS": "1",
    "X402__RECONCILIATION__INTERVAL_SECONDS": "0.5",
    "X402__RECONCILIATION__STALE_MARGIN_SECONDS": "1",
    "SERVER__AGENT_TIMEOUT_SECONDS": "3",
    "SERVER__TASK_LEASE_SECONDS": "2",
    "SERVER__QUEUE_POLL_SECONDS": "0.2",
    "SERVER__WORKERS": "1",
}
RESOLVED_WITHIN_SECONDS = 45


@dataclass(frozen=True)
class Step:
    name: str
    outcomes: frozenset[str]  # what may follow a kill at this step
    failpoint: str | None = None
    faults: dict[str, object] = field(default_factory=dict)
    agent_seconds: str = "0.2"
    first_env: dict[str, str] = field(default_factory=dict)  # the server that is killed


STEPS = [
    Step("after-nonce-claim", frozenset({"void"}), failpoint="after-claim"),
    Step("during-verify", frozenset({"void"}), faults={"verify_delay_seconds": 30}),
    Step("verified-not-queued", frozenset({"void"}), failpoint="after-verify"),
    Step(
        "verified-and-queued",
        frozenset({"delivered"}),
        failpoint="after-queue",
        # No worker looks before the kill (the handler stops before waking one), so the
        # task is still queued when the process dies.
        first_env={"SERVER__QUEUE_POLL_SECONDS": "600"},
    ),
    Step(
        "during-settle-transfer-landing",
        frozenset({"orphaned"}),
        faults={"settle_delay_seconds": 60},
    ),
    Step("after-settle-before-agent", frozenset({"orphaned"}), failpoint="after-settled"),
    Step("during-agent", frozenset({"orphaned"}), agent_seconds="60"),
    Step("after-agent-before-save", frozenset({"orphaned"}), failpoint="after-agent"),
]


def reached(path: Path, name: str) -> bool:
    return path.exists() and path.read_text().strip() == name


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_sigkill_at_each_step_ends_in_one_proven_outcome(
    devnet: Devnet, faults_reset, tmp_path, kind: str, step: Step
):
    payer = await devnet.new_payer(10 * AMOUNT)
    balance = await devnet.balance_of(payer.address)
    settles, before = devnet.stats.settle, devnet.stats.verify
    runs_file = tmp_path / "runs.txt"
    failpoint_file = tmp_path / "failpoint"
    async with storage_env(kind, tmp_path) as store, webhook_receiver() as hook:
        env = devnet.server_env(X402__RECONCILIATION__WEBHOOK_URL=hook.url, **store, **SETTINGS)
        env[agents.RUNS_FILE_ENV] = str(runs_file)
        first_env = {**env, "BINDU_TEST_AGENT_SECONDS": step.agent_seconds, **step.first_env}
        if step.failpoint:
            first_env |= {ENABLED_VAR: step.failpoint, FILE_VAR: str(failpoint_file)}
        faults_reset.update(step.faults)
        first = ServerProcess("tests.support.agents:slow", first_env, tmp_path / "a.log")
        await first.start()
        request: asyncio.Task | None = None
        client = PayingClient(first.url, payer)
        try:
            request = asyncio.create_task(client.send_text("crash me", blocking=False))
            await until(
                lambda: kill_point(step, devnet, payer.address, failpoint_file, runs_file, before),
                timeout=30,
                what=f"the server to reach {step.name}",
            )
        finally:
            first.kill()
            if request is not None:
                with contextlib.suppress(Exception):
                    await request  # its connection died with the server
                await client.aclose()
        faults_reset.reset()
        second = ServerProcess("tests.support.agents:slow", env, tmp_path / "b.log")
        await second.start()
        try:
            async with reading(env) as storage:

                async def resolved() -> str | None:
                    return await outcome(storage, payer.address, hook)

                found = await until(
                    resolved,
                    timeout=RESOLVED_WITHIN_SECONDS,
                    interval=0.2,
                    what=f"one outcome after a kill at {step.name}",
                )
                record = await payment_of(storage, payer.address)
                task = await storage.get_task(record.task_id) if record else None
        finally:
            second.stop()
        transfers = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
        calls = hook.calls_for(record.id) if record else 0
    runs = agents.count_runs(str(runs_file))
    assert found in step.outcomes, (found, step.outcomes)
    assert devnet.stats.settle - settles <= 1  # never a second /settle for one payment
    assert runs <= len(transfers)  # never work that was not paid for
    if found == "delivered":
        assert record is not None and task is not None
        assert task.state is TaskState.COMPLETED and task.artifacts
        [transfer] = transfers
        assert record.receipt is not None
        assert record.receipt.transaction == transfer["transaction_hash"]
        assert runs == 1 and calls == 0
    elif found == "orphaned":
        assert record is not None and task is not None
        [transfer] = transfers
        assert record.receipt is not None
        assert record.receipt.transaction == transfer["transaction_hash"]
        assert task.state is TaskState.FAILED  # not left working
        assert calls == 1  # the operator heard, exactly once
    else:
        assert transfers == []
        assert await devnet.balance_of(payer.address) == balance
        assert task is None or task.state.terminal


async def kill_point(
    step: Step, devnet: Devnet, payer: str, failpoint_file: Path, runs_file: Path, verifies: int
) -> bool:
    if step.failpoint:
        return reached(failpoint_file, step.failpoint)
    if step.faults.get("verify_delay_seconds"):
        # The request's /verify reached the facilitator, which holds its answer back.
        return devnet.stats.verify > verifies
    if step.faults.get("settle_delay_seconds"):
        # /settle was sent and the transfer is on chain; the answer is held back.
        landed = await devnet.transfer_logs(payer, devnet.info.pay_to)
        return len(landed) == 1
    return agents.count_runs(str(runs_file)) >= 1  # the agent is running


async def outcome(storage, payer: str, hook: WebhookReceiver) -> str | None:
    """The payment's outcome once it is final and everything it owes is done, else None."""
    record = await payment_of(storage, payer)
    if record is None:
        return "void"  # the claim was swept: nothing was ever sent to /settle
    task = await storage.get_task(record.task_id)
    if task is not None and not task.state.terminal:
        return None
    if record.status is PaymentStatus.COMPLETED:
        return "delivered" if task is not None and task.state is TaskState.COMPLETED else None
    if record.status is PaymentStatus.ORPHANED:
        return "orphaned" if hook.calls_for(record.id) >= 1 else None
    if record.status is PaymentStatus.VOID:
        return "void"
    return None
