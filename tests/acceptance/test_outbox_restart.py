"""Issue 9, must hold 6: the push receiver is down across a SIGKILL of a real ``bindu
serve``; when it comes back, every notification arrives, in order per task, once per
(task, state) — including those the killed process had written."""

from __future__ import annotations

import httpx

from bindu.payments.events import OutboxStatus
from bindu.server.embedded import bind, serving
from bindu.storage.sqlite import SqliteStorage
from tests.support.receivers import Receiver
from tests.support.servers import ServerProcess, rpc, text_message
from tests.support.waiting import until

AGENT = "tests.support.agents:counting"


async def test_notifications_survive_a_restart_while_the_receiver_is_down(tmp_path) -> None:
    db = tmp_path / "bindu.db"
    sock = bind()  # the receiver's port, refusing connections until it serves
    hook = f"http://127.0.0.1:{sock.getsockname()[1]}/push"
    env = {
        "STORAGE__URL": f"sqlite:///{db}",
        "PUSH__ALLOWED_HOSTS": "127.0.0.1",
        "PUSH__TIMEOUT_SECONDS": "2",
        "OUTBOX__POLL_SECONDS": "0.2",
        "OUTBOX__FIRST_RETRY_SECONDS": "0.2",
        "OUTBOX__MAX_RETRY_SECONDS": "1",
        "OUTBOX__MAX_ATTEMPTS": "1000",
    }
    watcher = SqliteStorage(str(db))
    first = ServerProcess(AGENT, env, tmp_path / "first.log")
    second = ServerProcess(AGENT, env, tmp_path / "second.log")
    receiver = Receiver()
    tasks: list[str] = []
    try:
        await first.start()
        await watcher.open()
        async with httpx.AsyncClient(timeout=30) as http:

            async def send(server: ServerProcess, n: int) -> None:
                config = {"pushNotificationConfig": {"url": hook, "token": f"t{n}"}}
                reply = await rpc(
                    http, server.url, "message/send", text_message(f"n{n}", configuration=config)
                )
                task = reply.json()["result"]
                assert task["status"]["state"] == "completed", task
                tasks.append(task["id"])

            for n in range(5):
                await send(first, n)

            async def all_tried() -> bool:
                # All written; the receiver's address tried and refused (while it fails,
                # one event probes it and the other tasks' wait their turn untried).
                items = await watcher.list_outbox()
                return len(items) == 10 and any(i.attempts >= 1 for i in items)

            await until(all_tried, timeout=30, what="the receiver tried and refused")
            first.kill()
            await second.start()
            for n in range(5, 8):
                await send(second, n)
            async with serving(receiver.app(), sock, lifespan="off"):

                async def all_arrived() -> bool:
                    return len(receiver.accepted) >= 2 * len(tasks)

                await until(all_arrived, timeout=60, what="every notification after restart")

                async def all_recorded() -> bool:
                    # The receiver answers before the server records the delivery.
                    items = await watcher.list_outbox(status=OutboxStatus.PENDING)
                    return not items

                await until(all_recorded, timeout=30, what="every delivery recorded")
                items = await watcher.list_outbox()
            second.stop()
    finally:
        first.kill()
        second.kill()
        await watcher.close()
    assert len(tasks) == 8
    for task_id in tasks:
        states = [b["status"]["state"] for b in receiver.bodies() if b["id"] == task_id]
        assert states == ["working", "completed"], (task_id, states)
    assert len(receiver.accepted) == 16  # once per (task, state): no duplicates
    assert {i.status for i in items} == {OutboxStatus.DELIVERED} and len(items) == 16
