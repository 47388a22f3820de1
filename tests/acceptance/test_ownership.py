"""Issue 10, must hold 2, against a real ``bindu serve`` paid on the devnet: two callers
with API keys and two wallets signed in with x402 sign-in-with-x each see only their own
tasks; an anonymous caller sees nobody's; the owner still reads its paid artifacts."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.extensions.sign_in_with_x import create_siwx_payload, encode_siwx_header
from x402.mechanisms.evm.signers import EthAccountSigner

from bindu.devnet import Devnet, PayingClient
from bindu.devnet.client import message_send_params, parse_payment_required
from bindu.server.auth.api_keys import key_digest
from bindu.server.auth.siwx import HEADER as SIWX_HEADER
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
ALICE_KEY = "alice-" + uuid.uuid4().hex
BOB_KEY = "bob-" + uuid.uuid4().hex
ANON_LOG_LINE = "auth: payments on and no API keys or JWKS configured"


@pytest.fixture(scope="module")
async def server(devnet: Devnet, tmp_path_factory) -> AsyncIterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("ownership")
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp}/bindu.db",
        X402__RECONCILIATION__ENABLED="false",
        AUTH__API_KEYS=json.dumps({"alice": key_digest(ALICE_KEY), "bob": key_digest(BOB_KEY)}),
        # Keyed callers and anonymous payers on one server.
        AUTH__ALLOW_ANONYMOUS="true",
        # Push configs below point at loopback (nothing listens there).
        PUSH__ALLOWED_HOSTS="127.0.0.1",
    )
    process = await ServerProcess("bindu.examples.echo:agent", env, tmp / "server.log").start()
    try:
        yield process
    finally:
        process.stop()


async def wallet(devnet: Devnet) -> LocalAccount:
    return await devnet.new_payer(10 * AMOUNT)


async def keyed_paid_send(client: PayingClient, key: str, text: str) -> dict[str, Any]:
    """message/send with an API key, paid by the client's wallet (every send is paid)."""
    headers = {"X-API-Key": key}
    params = message_send_params(text)
    unpaid = await client.rpc("message/send", params, headers)
    assert unpaid.status_code == 402, unpaid.text
    payment = await client.sign(parse_payment_required(unpaid))
    paid = await client.rpc("message/send", params, {**headers, **client._payment_headers(payment)})
    assert paid.status_code == 200, paid.text
    result: dict[str, Any] = paid.json()["result"]
    return result


async def call(url: str, method: str, params: dict[str, Any], headers: dict[str, str] | None):
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
    async with httpx.AsyncClient(timeout=60) as http:
        return await http.post(url + "/", json=body, headers=headers or {})


def listed_ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {task["id"] for task in response.json()["result"]["tasks"]}


def error_of(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


PUSH = {"url": "http://127.0.0.1:9/hook", "token": "alice-secret-token"}


async def test_callers_only_ever_see_their_own_tasks(server: ServerProcess, devnet: Devnet):
    url = server.url
    alice_headers = {"X-API-Key": ALICE_KEY}
    bob_headers = {"X-API-Key": BOB_KEY}
    w1, w2, w3 = await wallet(devnet), await wallet(devnet), await wallet(devnet)

    # Alice (API key) pays for a task with wallet w3: the key's principal owns it.
    async with PayingClient(url, w3) as payer:
        task_a = await keyed_paid_send(payer, ALICE_KEY, "alice's secret work")
        task_b = await keyed_paid_send(payer, BOB_KEY, "bob's work")
    assert task_a["status"]["state"] == "completed"
    set_push = await call(
        url,
        "tasks/pushNotificationConfig/set",
        {"taskId": task_a["id"], "pushNotificationConfig": PUSH},
        alice_headers,
    )
    assert "result" in set_push.json(), set_push.text

    # Two wallets pay anonymously: each paying wallet owns its task.
    async with PayingClient(url, w1) as one, PayingClient(url, w2) as two:
        paid_1 = (await one.send_text("wallet one's work")).response.json()["result"]
        paid_2 = (await two.send_text("wallet two's work")).response.json()["result"]
    assert paid_1["status"]["state"] == paid_2["status"]["state"] == "completed"

    unknown = str(uuid.uuid4())

    # Bob: lists only his own task; A's task answers exactly like an unknown one.
    assert listed_ids(await call(url, "tasks/list", {}, bob_headers)) == {task_b["id"]}
    for method, params in [
        ("tasks/get", lambda tid: {"id": tid}),
        ("tasks/cancel", lambda tid: {"id": tid}),
        ("tasks/pushNotificationConfig/get", lambda tid: {"id": tid}),
        (
            "tasks/pushNotificationConfig/set",
            lambda tid: {"taskId": tid, "pushNotificationConfig": {"url": "http://127.0.0.1:9/b"}},
        ),
    ]:
        theirs = error_of(await call(url, method, params(task_a["id"]), bob_headers))
        nothing = error_of(await call(url, method, params(unknown), bob_headers))
        assert theirs["code"] == nothing["code"] == -32001, method
        assert theirs["message"].replace(task_a["id"], "X") == nothing["message"].replace(
            unknown, "X"
        ), method
    # Nothing Bob tried changed Alice's task or her push config.
    mine = await call(url, "tasks/pushNotificationConfig/get", {"id": task_a["id"]}, alice_headers)
    assert mine.json()["result"]["pushNotificationConfig"]["url"] == PUSH["url"]

    # Wallet two, signed in with the SDK's sign-in-with-x: its own task only.
    async with PayingClient(url, w2) as two:
        listed = await two.signed_in_rpc("tasks/list", {})
        assert listed_ids(listed) == {paid_2["id"]}
        for method in ("tasks/get", "tasks/cancel", "tasks/pushNotificationConfig/get"):
            theirs = error_of(await two.signed_in_rpc(method, {"id": paid_1["id"]}))
            nothing = error_of(await two.signed_in_rpc(method, {"id": unknown}))
            assert theirs["code"] == nothing["code"] == -32001, method
        # A wallet is not a key holder either way round.
        assert error_of(await two.signed_in_rpc("tasks/get", {"id": task_a["id"]}))["code"] == (
            -32001
        )
    assert task_a["id"] not in listed_ids(await call(url, "tasks/list", {}, bob_headers))
    assert paid_1["id"] not in listed_ids(await call(url, "tasks/list", {}, alice_headers))

    # Anonymous: asked to sign in (a 402 with the SDK's sign-in challenge and nothing to
    # pay), never shown a task; A's task and an unknown id get the same answer.
    anonymous = await call(url, "tasks/list", {}, None)
    assert anonymous.status_code == 402
    challenge = anonymous.json()
    assert challenge["accepts"] == [] and "sign-in-with-x" in challenge["extensions"]
    assert "result" not in challenge and task_a["id"] not in anonymous.text
    for task_id in (task_a["id"], paid_1["id"], unknown):
        got = await call(url, "tasks/get", {"id": task_id}, None)
        assert got.status_code == 402 and task_id not in got.text
        assert got.json()["accepts"] == []

    # The owners still read their paid work, artifacts included.
    got_a = (await call(url, "tasks/get", {"id": task_a["id"]}, alice_headers)).json()["result"]
    assert got_a["artifacts"][0]["parts"][0]["text"] == "echo: alice's secret work"
    async with PayingClient(url, w1) as one:
        got_1 = (await one.signed_in_rpc("tasks/get", {"id": paid_1["id"]})).json()["result"]
        assert got_1["artifacts"][0]["parts"][0]["text"] == "echo: wallet one's work"
        listed_1 = await one.signed_in_rpc("tasks/list", {"includeArtifacts": True})
        [only] = listed_1.json()["result"]["tasks"]
        assert only["id"] == paid_1["id"] and only["artifacts"] == got_1["artifacts"]
    # Artifacts appear in a listing only when asked for.
    [plain] = (await call(url, "tasks/list", {}, alice_headers)).json()["result"]["tasks"]
    assert plain["id"] == task_a["id"] and plain["artifacts"] == []


async def test_bad_credentials_get_a_clear_401(server: ServerProcess, devnet: Devnet):
    url = server.url
    cases = [
        {"X-API-Key": "not-a-key"},
        {"X-API-Key": ALICE_KEY, "Authorization": "Bearer x.y.z"},  # two credentials
        {"Authorization": "Bearer a.b.c"},  # no JWKS configured here
        {"Authorization": "Basic YTpi"},
        {SIWX_HEADER: "not base64 !"},
        {SIWX_HEADER: "e30="},  # "{}"
    ]
    for headers in cases:
        response = await call(url, "tasks/list", {}, headers)
        assert response.status_code == 401, (headers, response.text)
        error = response.json()["error"]
        assert error["code"] == -32030 and error["message"].startswith("Unauthenticated")


async def test_a_signed_in_header_works_once(server: ServerProcess, devnet: Devnet):
    """The SDK signs a fresh challenge per request; a captured header cannot be replayed."""
    payer = await wallet(devnet)
    async with PayingClient(server.url, payer) as client:
        first = await client.signed_in_rpc("tasks/list", {})
        assert listed_ids(first) == set()  # signed in; owns nothing yet
    # The header the SDK's client extension would send, signed with its own functions.
    challenge = (await call(server.url, "tasks/list", {}, None)).json()
    ext = challenge["extensions"]["sign-in-with-x"]
    info = {**ext["info"], **ext["supportedChains"][0]}
    header = encode_siwx_header(
        await create_siwx_payload(info, EthAccountSigner(payer), server.url + "/")
    )
    assert listed_ids(await call(server.url, "tasks/list", {}, {SIWX_HEADER: header})) == set()
    replay = await call(server.url, "tasks/list", {}, {SIWX_HEADER: header})
    assert replay.status_code == 401 and "already used" in replay.json()["error"]["message"]


async def test_payments_without_authentication_log_one_line(devnet: Devnet, tmp_path):
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db", X402__RECONCILIATION__ENABLED="false"
    )
    process = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "s.log").start()
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            card = (await http.get(process.url + "/.well-known/agent.json")).json()
    finally:
        process.stop()
    lines = [line for line in process.log().splitlines() if ANON_LOG_LINE in line]
    assert len(lines) == 1, process.log()
    assert "list no tasks" in lines[0] and "SIGN-IN-WITH-X" in lines[0]
    # The card declares the wallet sign-in and lets anonymous callers in.
    assert card["securitySchemes"]["siwx"]["name"] == SIWX_HEADER
    assert {} in card["security"] and {"siwx": []} in card["security"]
    declared = card["x402"]["extensions"]["sign-in-with-x"]
    assert declared["supportedChains"] == [{"chainId": devnet.info.network, "type": "eip191"}]
    assert "nonce" not in declared["info"] and declared["info"]["domain"] in process.url
