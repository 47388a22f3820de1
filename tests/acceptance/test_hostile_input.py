"""Must-hold 1 of issue 10, against the real `bindu serve` with payments on: deep nesting,
lone surrogates in every string field, oversized ids and tokens get clean JSON-RPC errors,
nothing is written, and the process stays alive."""

from __future__ import annotations

import json

import httpx
import pytest

from bindu.devnet import Devnet, PayingClient
from bindu.server.auth.api_keys import key_digest
from tests.support.hostile import (
    LONE_SURROGATE,
    VALID_PARAMS,
    request,
    row_counts,
    string_positions,
    with_string_replaced,
)
from tests.support.servers import ServerProcess, rpc, text_message

pytestmark = pytest.mark.devnet

BODY_LIMIT = 2_000_000


@pytest.fixture(scope="module")
async def server(devnet: Devnet, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("hostile")
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        SERVER__MAX_BODY_BYTES=str(BODY_LIMIT),
        # Anonymous reads answer as for an unknown task (JSON-RPC), not with the wallet
        # sign-in challenge (an x402 402 body): every answer here is a JSON-RPC error.
        AUTH__SIWX="false",
    )
    proc = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "server.log").start()
    proc.db = tmp_path / "bindu.db"  # type: ignore[attr-defined]
    yield proc
    proc.stop()


@pytest.fixture
async def http():
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def post(http: httpx.AsyncClient, server: ServerProcess, body: bytes) -> dict:
    reply = await http.post(server.url + "/", content=body)
    assert reply.status_code < 500, reply.text
    doc = reply.json()
    assert doc["jsonrpc"] == "2.0"
    return doc["error"]


def alive(server: ServerProcess) -> None:
    assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]


def prefix(method: str) -> bytes:
    return b'{"jsonrpc": "2.0", "id": 1, "method": "' + method.encode() + b'", "params": '


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("200 KB of [ in params", prefix("tasks/get") + b"[" * 200_000),
        ("200 KB of [ closed", prefix("tasks/get") + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ('1 MB of {"a": below the body limit', prefix("message/send") + b'{"a":' * 200_000),
        ('a bare 1 MB of {"a":', b'{"a":' * 200_000),
        ("33 levels, closed", prefix("tasks/list") + b'{"a":' * 32 + b"1" + b"}" * 33),
        ("[ inside a string is not nesting, ] outside is", prefix("tasks/get") + b'"[[["]]]]'),
    ],
)
async def test_deep_nesting_is_refused_before_parsing(server, http, name, body):
    before = row_counts(server.db)
    assert len(body) <= BODY_LIMIT
    error = await post(http, server, body)
    assert error["code"] in (-32600, -32700), name
    alive(server)
    assert row_counts(server.db) == before


async def test_deep_nesting_above_the_body_limit_is_413(server, http):
    body = b'{"a":' * (BODY_LIMIT // 5 + 1000)
    reply = await http.post(server.url + "/", content=body)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == -32600
    alive(server)


async def test_nesting_within_the_limit_still_works(server, http):
    data: dict = {"leaf": 1}
    for _ in range(20):
        data = {"d": data}
    params = VALID_PARAMS["tasks/list"] | {"contextId": "nobody"}
    body = json.dumps(request("tasks/list", params | {"extra": data})).encode()
    reply = await http.post(server.url + "/", content=body)
    assert reply.json()["result"]["tasks"] == []


def surrogate_cases() -> list[tuple[str, str, bytes]]:
    cases = []
    for method, params in VALID_PARAMS.items():
        doc = request(method, params, "req-1")
        for path in string_positions(doc):
            bad = with_string_replaced(doc, path, "x" + LONE_SURROGATE + "y")
            where = ".".join("<key>" if p is None else str(p) for p in path)
            # ensure_ascii (the default) writes the surrogate as the escape \ud800.
            cases.append((method, where, json.dumps(bad).encode()))
    return cases


async def test_lone_surrogates_in_every_string_field(server, http, devnet: Devnet):
    cases = surrogate_cases()
    assert len(cases) > 80
    before = row_counts(server.db)
    # Paid message/send bodies carry a real signed payment: refused before it is looked at.
    payer = await devnet.new_payer(10_000)
    async with PayingClient(server.url, payer, http) as client:
        payment = await client.sign(await client.payment_required())
        headers = client._payment_headers(payment)
    for method, where, body in cases:
        reply = await http.post(server.url + "/", content=body, headers=headers)
        assert reply.status_code < 500, (method, where, reply.text)
        error = reply.json()["error"]
        # A string inside params is a bad parameter; a top-level one (the "params" key
        # itself included) makes a bad request.
        in_params = where.startswith("params.") and where != "params.<key>"
        assert error["code"] == (-32602 if in_params else -32600), (method, where, error)
        assert "lone surrogate" in error["message"]
        # The id is echoed only when it is itself clean.
        assert reply.json()["id"] == ("req-1" if in_params else None)
    alive(server)
    assert row_counts(server.db) == before  # no task, no payment claim


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"jsonrpc": "2.0", "id": ' + b"9" * 5000 + b', "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": ' + b"9" * 30 + b', "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 9223372036854775808, "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": -9223372036854775808, "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": "' + b"i" * 257 + b'", "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": 1e400, "method": "tasks/list"}', -32600),
        (b'{"jsonrpc": "2.0", "id": NaN, "method": "tasks/list"}', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "' + b"m" * 100_000 + b'"}', -32601),
        (json.dumps(request("tasks/list", {"pageToken": "²"})).encode(), -32602),
        (json.dumps(request("tasks/list", {"pageToken": "9" * 30})).encode(), -32602),
        (json.dumps(request("tasks/list", {"pageToken": "9" * 5000})).encode(), -32602),
        (json.dumps(request("tasks/list", {"pageToken": "-1"})).encode(), -32602),
        (json.dumps(request("tasks/list", {"pageToken": 5})).encode(), -32602),
        (json.dumps(request("tasks/list", {"pageSize": 10**30})).encode(), -32602),
        (json.dumps(request("tasks/get", {"id": "t" * 10_000})).encode(), -32602),
        (json.dumps(request("tasks/get", {"id": "t", "historyLength": 10**40})).encode(), -32001),
        (json.dumps(request("tasks/cancel", {"id": "t" * 10_000})).encode(), -32602),
        (json.dumps(request("tasks/pushNotificationConfig/get", {"id": ""})).encode(), -32602),
        (
            json.dumps(
                request(
                    "message/send",
                    {
                        "message": {
                            "role": "user",
                            "messageId": "m" * 300,
                            "parts": [{"kind": "text", "text": "x"}],
                        }
                    },
                )
            ).encode(),
            -32602,
        ),
    ],
)
async def test_oversized_ids_and_tokens(server, http, body, code):
    before = row_counts(server.db)
    error = await post(http, server, body)
    assert error["code"] == code
    assert len(error["message"]) < 300  # nothing huge is echoed back
    alive(server)
    assert row_counts(server.db) == before


async def test_a_paid_request_works_afterwards(server, devnet: Devnet):
    payer = await devnet.new_payer(10_000)
    async with PayingClient(server.url, payer) as client:
        reply = await client.send_text("still here")
    task = reply.response.json()["result"]
    assert task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"][0]["text"] == "echo: still here"
    alive(server)


async def test_a_stored_task_that_cannot_encode_breaks_no_listing(tmp_path):
    # Listings are per owner: this caller has a key (anonymous callers list nothing).
    key = "unencodable-test-key"
    env = {
        "STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db",
        "AUTH__API_KEYS": json.dumps({"tester": key_digest(key)}),
    }
    proc = await ServerProcess("tests.support.agents:unencodable", env, tmp_path / "u.log").start()
    try:
        async with httpx.AsyncClient(timeout=30, headers={"X-API-Key": key}) as client:
            reply = await rpc(client, proc.url, "message/send", text_message("hi"))
            assert reply.status_code == 200
            task = reply.json()["result"]
            assert task["artifacts"][0]["parts"][0]["text"] == "bad \ufffd output"
            data = task["artifacts"][0]["parts"][1]["data"]
            assert data["ratio"] is None and len(data) == 2  # the key arrives, replaced too
            listed = await rpc(client, proc.url, "tasks/list", {"includeArtifacts": True})
            assert listed.status_code == 200
            assert [t["id"] for t in listed.json()["result"]["tasks"]] == [task["id"]]
            got = await rpc(client, proc.url, "tasks/get", {"id": task["id"]})
            assert got.json()["result"]["artifacts"] == task["artifacts"]
    finally:
        proc.stop()
