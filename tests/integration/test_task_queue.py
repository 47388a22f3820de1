"""The durable task queue in process: the bound on queued tasks (checked before any payment
work), tasks/cancel as a compare-and-set against the workers, and what shutdown records
for a run it had to cancel."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bindu.a2a import Message, Task, TaskState, TaskStatus, TextPart
from bindu.devnet import Devnet, PayingClient
from bindu.server.task_manager import TaskManager
from bindu.storage.memory import MemoryStorage
from tests.support.servers import inprocess_server, rpc, text_message
from tests.support.settings import settings_from_env
from tests.support.waiting import until

AMOUNT = 10_000


class Gate:
    """An async agent that holds every run until the test opens the gate."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.ran: list[str] = []

    async def __call__(self, history: list[Message]) -> str:
        self.ran.append(history[-1].task_id or "?")
        await self.open.wait()
        return "done"


def later(text: str) -> dict:
    return text_message(text, configuration={"blocking": False})


async def test_queue_full_answers_503_and_stores_nothing():
    gate = Gate()
    storage = MemoryStorage()
    settings = settings_from_env({"SERVER__WORKERS": "1", "SERVER__MAX_QUEUED": "2"})
    async with (
        inprocess_server(settings, gate, storage=storage) as url,
        httpx.AsyncClient(timeout=10) as http,
    ):
        first = (await rpc(http, url, "message/send", later("a"))).json()["result"]["id"]
        await until(lambda: _ran(gate, 1), what="the first run to start")
        for text in ("b", "c"):  # queued behind it
            assert (await rpc(http, url, "message/send", later(text))).status_code == 200
        refused = await rpc(http, url, "message/send", later("d"))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"].isdigit()
        error = refused.json()["error"]
        assert error["code"] == -32012 and "queue is full" in error["message"]
        assert len(await storage.list_tasks()) == 3  # nothing was accepted for "d"
        # Other methods still answer.
        got = await rpc(http, url, "tasks/get", {"id": first})
        assert got.json()["result"]["status"]["state"] == "working"
        gate.open.set()
        await until(lambda: _all_final(storage, 3), what="the queue to drain")
        done = await rpc(http, url, "message/send", text_message("e"))
        assert done.json()["result"]["status"]["state"] == "completed"


@pytest.mark.devnet
async def test_queue_full_is_refused_before_any_payment_work(devnet: Devnet, tmp_path):
    gate = Gate()
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        SERVER__WORKERS="1",
        SERVER__MAX_QUEUED="1",
    )
    storage = MemoryStorage()
    async with inprocess_server(settings_from_env(env), gate, storage=storage) as url:
        async with PayingClient(url, payer) as client:
            payment = await client.sign(await client.payment_required())  # priced while open
            await client.send_text("runs", blocking=False)
            await until(lambda: _ran(gate, 1), what="the first paid run")
            await client.send_text("waits", blocking=False)  # the one queued task
            verifies, balance = devnet.stats.verify, await devnet.balance_of(payer.address)
            refused = await client.send_text("no room", payment=payment, blocking=False)
            assert refused.response.status_code == 503
            assert refused.response.json()["error"]["code"] == -32012
            assert devnet.stats.verify == verifies  # the facilitator never heard of it
            payers = {r.nonce for r in await storage.list_payments()}
            assert payment.payload["authorization"]["nonce"].lower() not in payers
            gate.open.set()
            await until(lambda: _all_final(storage, 2), timeout=30, what="both paid tasks")
        assert await devnet.balance_of(payer.address) == balance - AMOUNT  # "waits" only


async def test_cancel_wins_over_a_queued_run_and_the_agent_never_sees_it():
    gate = Gate()
    settings = settings_from_env({"SERVER__WORKERS": "1"})
    async with (
        inprocess_server(settings, gate, storage=MemoryStorage()) as url,
        httpx.AsyncClient(timeout=10) as http,
    ):
        busy = (await rpc(http, url, "message/send", later("busy"))).json()["result"]["id"]
        await until(lambda: _ran(gate, 1), what="the first run")
        queued = (await rpc(http, url, "message/send", later("q"))).json()["result"]["id"]
        canceled = (await rpc(http, url, "tasks/cancel", {"id": queued})).json()["result"]
        assert canceled["status"]["state"] == "canceled"
        again = (await rpc(http, url, "tasks/cancel", {"id": queued})).json()
        assert again["error"]["code"] == -32002
        running = (await rpc(http, url, "tasks/cancel", {"id": busy})).json()
        assert running["error"]["code"] == -32002 and "working" in running["error"]["message"]
        gate.open.set()
        await rpc(http, url, "message/send", text_message("after"))
    assert queued not in gate.ran and busy in gate.ran


@pytest.mark.devnet
async def test_cancel_of_a_queued_paid_task_writes_task_and_payment_at_once(
    devnet: Devnet, tmp_path
):
    """One write moves the task to canceled and its payment to failed (cancel-marked, for
    the reconciler to prove void): no crash can leave a queued payment beside a canceled
    task, and /settle is never sent for it."""
    gate = Gate()
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db", SERVER__WORKERS="1")
    storage = MemoryStorage()
    async with inprocess_server(settings_from_env(env), gate, storage=storage) as url:
        async with PayingClient(url, payer) as client:
            await client.send_text("runs", blocking=False)
            await until(lambda: _ran(gate, 1), what="the first paid run")
            settles = devnet.stats.settle
            waiting = await client.send_text("waits", blocking=False)
            task_id = waiting.response.json()["result"]["id"]
            canceled = await client.signed_in_rpc("tasks/cancel", {"id": task_id})
            result = canceled.json()["result"]
            assert result["status"]["state"] == "canceled"
            assert result["metadata"]["x402.payment.status"] == "payment-failed"
            record = await storage.get_payment_for_task(task_id)
            assert record is not None and record.status.value == "payment-failed"
            assert [a["source"] for a in record.answers] == ["cancel"]
            stored = await storage.get_task(task_id)
            assert stored is not None and stored.state is TaskState.CANCELED
            gate.open.set()
            await until(lambda: _all_final(storage, 2), timeout=30, what="both paid tasks")
        assert devnet.stats.settle == settles  # the first run had settled already
    assert len(gate.ran) == 1


async def test_shutdown_past_grace_fails_an_unpaid_run_with_a_reason():
    gate = Gate()  # never opened: the run outlives the grace
    storage = MemoryStorage()
    settings = settings_from_env({"SERVER__SHUTDOWN_GRACE_SECONDS": "0.2"})
    async with TaskManager(settings, gate, storage=storage) as manager:
        task = Task(id="t-1", status=TaskStatus(state=TaskState.SUBMITTED))
        task.history = [Message(role="user", parts=[TextPart(text="x")], task_id=task.id)]
        await storage.create_task(task)
        await manager.submit(task.id)
        await until(lambda: _ran(gate, 1), what="the run to start")
    task_id = task.id
    stored = await storage.get_task(task_id)
    assert stored is not None and stored.state is TaskState.FAILED
    assert stored.status.message is not None
    assert "server shut down before the work was finished" in str(stored.status.message.parts[0])


async def _ran(gate: Gate, n: int) -> bool:
    return len(gate.ran) >= n


async def _all_final(storage: MemoryStorage, n: int) -> bool:
    tasks = await storage.list_tasks()
    return len(tasks) >= n and all(t.state.terminal for t in tasks)
