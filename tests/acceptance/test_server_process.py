"""The real server process (`bindu serve`): round trip, bad input, SIGKILL and restart."""

from __future__ import annotations

import httpx
import pytest

from bindu.server.auth.api_keys import key_digest
from tests.support.servers import ServerProcess, rpc, text_message
from tests.support.waiting import until

# Anonymous callers list nobody's tasks: the listings below use a key (anonymous allowed too).
KEY = "server-process-test-key"
KEYED = {"AUTH__API_KEYS": f'{{"tester": "{key_digest(KEY)}"}}', "AUTH__ALLOW_ANONYMOUS": "true"}
AS_TESTER = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("server")
    proc = ServerProcess(
        "bindu.examples.echo:agent",
        {
            "STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db",
            "SERVER__MAX_BODY_BYTES": "4096",
            **KEYED,
        },
        tmp_path / "server.log",
    )
    await proc.start()
    yield proc
    proc.stop()


async def test_round_trip_card_and_health(tmp_path):
    env = {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db"}
    server = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "r.log").start()
    try:
        await _round_trip(server)
    finally:
        server.stop()


async def _round_trip(server: ServerProcess) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await rpc(client, server.url, "message/send", text_message("hello"))
        task = reply.json()["result"]
        assert task["status"]["state"] == "completed"
        assert task["artifacts"][0]["parts"][0] == {"kind": "text", "text": "echo: hello"}
        assert task["kind"] == "task" and task["contextId"]
        card = (await client.get(server.url + "/.well-known/agent.json")).json()
        assert card["url"] == server.url + "/"
        assert {"name", "description", "skills", "capabilities"} <= card.keys()
        health = (await client.get(server.url + "/health")).json()
        assert health["status"] == "ok"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"this is not json", -32700),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "tasks/get", "params": {"id": "x"}}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/explode", "params": {}}', -32601),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get"}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": 5}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {}}', -32602),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": '
            b'{"role": "user", "parts": []}}}',
            -32602,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": '
            b'{"role": "robot", "parts": [{"kind": "text", "text": "x"}]}}}',
            -32602,
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "nope"}}', -32001),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/cancel", "params": {"id": "nope"}}',
            -32001,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tasks/list", "params": {"pageToken": "x"}}',
            -32602,
        ),
    ],
)
async def test_bad_input_gets_the_matching_error(server, body, code):
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.post(server.url + "/", content=body, headers=AS_TESTER)
        assert reply.status_code < 500
        assert reply.json()["error"]["code"] == code
        # Nothing was created by bad input.
        listed = await rpc(client, server.url, "tasks/list", {}, headers=AS_TESTER)
        assert listed.json()["result"]["tasks"] == []


async def test_body_over_the_limit(server):
    async with httpx.AsyncClient(timeout=10) as client:
        big = text_message("x" * 10_000)
        reply = await rpc(client, server.url, "message/send", big, headers=AS_TESTER)
        assert reply.status_code == 413
        assert reply.json()["error"]["code"] == -32600
        listed = await rpc(client, server.url, "tasks/list", {}, headers=AS_TESTER)
        assert listed.json()["result"]["tasks"] == []


async def test_sigkill_and_restart_keeps_every_task(tmp_path):
    env = {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db", **KEYED}
    first = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "a.log").start()
    ids = []
    async with httpx.AsyncClient(timeout=10) as client:
        for i in range(20):
            message = text_message(f"m{i}")
            reply = await rpc(client, first.url, "message/send", message, headers=AS_TESTER)
            ids.append(reply.json()["result"]["id"])
        first.kill()
        second = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "b.log").start()
        try:
            for i, task_id in enumerate(ids):
                got = (
                    await rpc(client, second.url, "tasks/get", {"id": task_id}, headers=AS_TESTER)
                ).json()
                task = got["result"]
                assert task["status"]["state"] == "completed"
                assert task["artifacts"][0]["parts"][0]["text"] == f"echo: m{i}"
            page = {"pageSize": 500}
            listed = await rpc(client, second.url, "tasks/list", page, headers=AS_TESTER)
            assert {t["id"] for t in listed.json()["result"]["tasks"]} == set(ids)
        finally:
            second.stop()


async def test_cancel_a_queued_task(tmp_path):
    env = {
        "STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db",
        "SERVER__WORKERS": "1",
        "BINDU_TEST_AGENT_SECONDS": "2",
    }
    proc = await ServerProcess("tests.support.agents:slow", env, tmp_path / "s.log").start()
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            params = text_message("first", configuration={"blocking": False})
            busy = (await rpc(client, proc.url, "message/send", params)).json()["result"]
            params = text_message("second", configuration={"blocking": False})
            queued = (await rpc(client, proc.url, "message/send", params)).json()["result"]
            canceled = (await rpc(client, proc.url, "tasks/cancel", {"id": queued["id"]})).json()
            assert canceled["result"]["status"]["state"] == "canceled"
            again = (await rpc(client, proc.url, "tasks/cancel", {"id": queued["id"]})).json()
            assert again["error"]["code"] == -32002

            async def finished() -> bool:
                got = (await rpc(client, proc.url, "tasks/get", {"id": busy["id"]})).json()
                return got["result"]["status"]["state"] == "completed"

            await until(finished, timeout=20, what="first task to complete")
            got = (await rpc(client, proc.url, "tasks/get", {"id": queued["id"]})).json()
            assert got["result"]["status"]["state"] == "canceled"
    finally:
        proc.stop()
