"""Push URLs that reach inside are refused when set, against the real server (issue 10,
must hold 3); an allowlisted receiver gets signed notifications it can verify with the
server's JWKS; configs are never read back with credentials."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from bindu.examples.echo import agent as echo
from bindu.storage.sqlite import SqliteStorage
from tests.support.receivers import Receiver, receiving, verified_claims
from tests.support.servers import inprocess_server, rpc, text_message
from tests.support.settings import settings_from_env
from tests.support.waiting import until

INVALID_PARAMS = -32602
TOKEN = "client-token-1"


@pytest.fixture
async def listener() -> AsyncIterator[socket.socket]:
    """A loopback port that records whether anything connected (nothing may)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def contacted(sock: socket.socket) -> bool:
    try:
        sock.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def refused_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://[::1]:{port}/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        f"http://0x7f000001:{port}/hook",
        f"http://localhost:{port}/hook",
    ]


def server_env(tmp_path, **extra: str) -> dict[str, str]:
    return {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db", **extra}


async def test_internal_push_urls_are_refused_when_set(tmp_path, listener) -> None:
    urls = refused_urls(listener.getsockname()[1])
    async with (
        inprocess_server(settings_from_env(server_env(tmp_path)), echo) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        task = (await rpc(http, url, "message/send", text_message("hi"))).json()["result"]
        for push_url in urls:
            config = {"url": push_url, "token": TOKEN}
            params = {"taskId": task["id"], "pushNotificationConfig": config}
            reply = (await rpc(http, url, "tasks/pushNotificationConfig/set", params)).json()
            error = reply["error"]
            assert error["code"] == INVALID_PARAMS, (push_url, reply)
            assert "pushNotificationConfig.url" in error["message"]
            assert "PUSH__ALLOWED_HOSTS" in error["message"]
            got = await rpc(http, url, "tasks/pushNotificationConfig/get", {"id": task["id"]})
            assert "No push notification config" in got.json()["error"]["message"]

            send = text_message("hi", configuration={"pushNotificationConfig": config})
            reply = (await rpc(http, url, "message/send", send)).json()
            assert reply["error"]["code"] == INVALID_PARAMS, (push_url, reply)
    stored = SqliteStorage(str(tmp_path / "bindu.db"))
    await stored.open()
    try:
        listed = await stored.list_tasks()
        outbox = await stored.list_outbox()
    finally:
        await stored.close()
    assert [t.id for t in listed] == [task["id"]]  # no task from a refused send
    assert outbox == []  # and nothing to send
    assert not contacted(listener)


async def test_a_paid_call_with_an_internal_push_url_is_refused_before_payment(
    tmp_path, listener
) -> None:
    # No facilitator listens: a call that got as far as the paywall would answer 503 or 402.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    env = server_env(
        tmp_path,
        X402__PAY_TO="0x" + "ab" * 20,
        X402__ASSET="0x" + "cd" * 20,
        X402__FACILITATOR_URL=f"http://127.0.0.1:{port}",
        X402__NETWORK="eip155:31337",
    )
    async with (
        inprocess_server(settings_from_env(env), echo) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        for push_url in refused_urls(listener.getsockname()[1]):
            config = {"url": push_url, "token": TOKEN}
            send = text_message("hi", configuration={"pushNotificationConfig": config})
            headers = {"PAYMENT-SIGNATURE": "x"}
            reply = await rpc(http, url, "message/send", send, headers=headers)
            assert reply.status_code == 200
            assert reply.json()["error"]["code"] == INVALID_PARAMS
    dead.close()
    assert not contacted(listener)


async def test_an_allowlisted_receiver_gets_signed_notifications(tmp_path) -> None:
    receiver = Receiver()
    env = server_env(tmp_path, PUSH__ALLOWED_HOSTS="127.0.0.1", OUTBOX__POLL_SECONDS="0.2")
    async with (
        receiving(receiver) as hook,
        inprocess_server(settings_from_env(env), echo) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        push_url = hook + "/push"
        config = {
            "url": push_url,
            "token": TOKEN,
            "authentication": {"schemes": ["Bearer"], "credentials": "client-secret"},
        }
        send = text_message("hi", configuration={"pushNotificationConfig": config})
        task = (await rpc(http, url, "message/send", send)).json()["result"]
        got = (await rpc(http, url, "tasks/pushNotificationConfig/get", {"id": task["id"]})).json()
        assert got["result"]["pushNotificationConfig"] == {
            "url": push_url,
            "authentication": {"schemes": ["Bearer"]},
        }

        async def completed() -> bool:
            return any(b["status"]["state"] == "completed" for b in receiver.bodies())

        await until(completed, timeout=20, what="the completed notification")
        claims = [await verified_claims(call, url, push_url) for call in receiver.accepted]
    assert [b["status"]["state"] for b in receiver.bodies()] == ["working", "completed"]
    assert {c["taskId"] for c in claims} == {task["id"]}
    for call in receiver.accepted:
        assert call.headers["x-a2a-notification-token"] == TOKEN
        assert call.headers["authorization"] == "Bearer client-secret"
        assert call.body["history"] == []


async def test_a_forged_notification_fails_verification(tmp_path) -> None:
    receiver = Receiver()
    env = server_env(tmp_path, PUSH__ALLOWED_HOSTS="127.0.0.1", OUTBOX__POLL_SECONDS="0.2")
    async with (
        receiving(receiver) as hook,
        inprocess_server(settings_from_env(env), echo) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        config = {"url": hook + "/push"}
        send = text_message("hi", configuration={"pushNotificationConfig": config})
        await rpc(http, url, "message/send", send)
        await until(lambda: _two(receiver), timeout=20, what="two notifications")
        call = receiver.accepted[0]
        # Without client credentials the JWT also takes the Authorization header.
        assert call.headers["authorization"] == "Bearer " + call.headers["x-a2a-notification-jwt"]
        tampered = type(call)(call.path, call.headers, call.raw.replace(b"working", b"complete"))
        with pytest.raises(AssertionError):
            await verified_claims(tampered, url, hook + "/push")
        with pytest.raises(jwt.InvalidAudienceError):
            await verified_claims(call, url, "https://someone.else/hook")


async def _two(receiver: Receiver) -> bool:
    return len(receiver.accepted) >= 2
