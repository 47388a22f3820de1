"""The x402 paywall against the real devnet: anvil, our token, the SDK's facilitator."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_response_header

from bindu.devnet import Devnet, PayingClient
from bindu.payments.records import PaymentStatus
from bindu.storage.factory import open_storage
from tests.support import agents
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env

pytestmark = pytest.mark.devnet

AMOUNT = 10_000


@pytest.fixture(scope="module")
def runs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("runs") / "runs.txt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(agents.RUNS_FILE_ENV, str(path))
        yield path


@pytest.fixture(scope="module")
def payers_used() -> list[str]:
    return []


@pytest.fixture(scope="module")
async def server(devnet: Devnet, runs_file, tmp_path_factory) -> AsyncIterator[str]:
    db = tmp_path_factory.mktemp("paywall") / "bindu.db"
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{db}",
        X402__RECONCILIATION__ENABLED="false",
        X402__SETTLE_TIMEOUT_SECONDS="10",
    )
    async with inprocess_server(settings_from_env(env), agents.counting) as url:
        yield url


@pytest.fixture
async def payer(devnet: Devnet, payers_used) -> LocalAccount:
    account = await devnet.new_payer(10 * AMOUNT)
    payers_used.append(account.address)
    return account


async def test_unpaid_call_gets_402_matching_settings(server, devnet, payer, runs_file):
    before = agents.count_runs(str(runs_file))
    async with PayingClient(server, payer) as client:
        reply = await client.send_text("free lunch?", payment=None)
    response = reply.response
    assert response.status_code == 402
    body = response.json()
    assert body["x402Version"] == 2
    assert body["error"] == "payment required"
    [accept] = body["accepts"]
    assert accept["scheme"] == "exact"
    assert accept["network"] == devnet.info.network
    assert accept["asset"].lower() == devnet.info.token_address.lower()
    assert accept["amount"] == str(AMOUNT)
    assert accept["payTo"].lower() == devnet.info.pay_to.lower()
    assert accept["extra"] == {"name": "USD Coin", "version": "2"}
    header = json.loads(base64.b64decode(response.headers["PAYMENT-REQUIRED"]))
    assert header["accepts"] == body["accepts"]
    assert agents.count_runs(str(runs_file)) == before


async def test_paid_call_completes_with_the_real_transfer(server, devnet, payer):
    info = devnet.info
    payer_before = await devnet.balance_of(payer.address)
    payee_before = await devnet.balance_of(info.pay_to)
    async with PayingClient(server, payer) as client:
        reply = await client.send_text("hello")
    task = reply.response.json()["result"]
    assert task["status"]["state"] == "completed"
    meta = task["metadata"]
    assert meta["x402.payment.status"] == "payment-completed"
    [receipt] = meta["x402.payment.receipts"]
    assert receipt["payer"].lower() == payer.address.lower()
    assert receipt["amount"] == str(AMOUNT)
    assert receipt["network"] == info.network
    tx = await devnet.receipt(receipt["transaction"])
    assert int(tx["status"], 16) == 1
    logs = await devnet.transfer_logs(payer.address, info.pay_to)
    assert [(log["transaction_hash"], log["value"]) for log in logs] == [
        (receipt["transaction"], AMOUNT)
    ]
    assert await devnet.balance_of(payer.address) == payer_before - AMOUNT
    assert await devnet.balance_of(info.pay_to) == payee_before + AMOUNT
    # The signed payload is never handed out.
    assert "signature" not in json.dumps(task)
    # x402's PAYMENT-RESPONSE header carries the settlement, readable by the SDK.
    settled = decode_payment_response_header(reply.response.headers["PAYMENT-RESPONSE"])
    assert settled.success and settled.transaction == receipt["transaction"]


async def test_replay_is_refused_and_the_agent_ran_once(server, devnet, payer, runs_file):
    async with PayingClient(server, payer) as client:
        first = await client.send_text("once")
        assert first.response.json()["result"]["status"]["state"] == "completed"
        runs = agents.count_runs(str(runs_file))
        again = await client.send_text("twice", payment=first.payment)
    assert again.response.status_code == 402
    assert "replay" in again.response.json()["error"]
    assert agents.count_runs(str(runs_file)) == runs


def _tamper_signature(payload):
    sig = payload.payload["signature"]
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    return payload.model_copy(update={"payload": {**payload.payload, "signature": flipped}})


def _tamper_authorization(field: str, value: str):
    def tamper(payload):
        auth = {**payload.payload["authorization"], field: value}
        return payload.model_copy(update={"payload": {**payload.payload, "authorization": auth}})

    return tamper


def _tamper_accepted(field: str, value: str):
    def tamper(payload):
        accepted = payload.accepted.model_copy(update={field: value})
        return payload.model_copy(update={"accepted": accepted})

    return tamper


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_tamper_signature, "payment invalid: invalid_exact_evm_payload_signature"),
        (_tamper_authorization("value", "1"), "value does not match"),
        (_tamper_authorization("to", "0x" + "9" * 40), "wrong recipient"),
        (_tamper_authorization("validBefore", "1000"), "expired"),
        (_tamper_authorization("validBefore", "99999999999"), "longer than maxTimeoutSeconds"),
        (_tamper_authorization("nonce", "0x1234"), "malformed payment"),
        (_tamper_accepted("amount", "1"), "does not match the accepted requirements"),
        (_tamper_accepted("pay_to", "0x" + "9" * 40), "does not match the accepted requirements"),
    ],
)
async def test_invalid_payments_get_402_and_no_work(
    server, devnet, payer, runs_file, tamper, reason
):
    runs = agents.count_runs(str(runs_file))
    sent = await devnet.tx_count(devnet.info.facilitator_address)
    async with PayingClient(server, payer) as client:
        tasks_before = await _task_count(client)
        payment = tamper(await client.sign(await client.payment_required()))
        reply = await client.send_text("cheat", payment=payment)
        assert await _task_count(client) == tasks_before
    assert reply.response.status_code == 402
    assert reason in reply.response.json()["error"]
    assert agents.count_runs(str(runs_file)) == runs
    assert await devnet.tx_count(devnet.info.facilitator_address) == sent


async def _task_count(client: PayingClient) -> int:
    reply = await client.signed_in_rpc("tasks/list", {"pageSize": 500})
    return len(reply.json()["result"]["tasks"])


async def test_insufficient_balance_is_refused(server, devnet, runs_file):
    broke = await devnet.new_payer(AMOUNT - 1)
    runs = agents.count_runs(str(runs_file))
    sent = await devnet.tx_count(devnet.info.facilitator_address)
    async with PayingClient(server, broke) as client:
        reply = await client.send_text("on credit")
    assert reply.response.status_code == 402
    assert "insufficient_balance" in reply.response.json()["error"]
    assert agents.count_runs(str(runs_file)) == runs
    assert await devnet.tx_count(devnet.info.facilitator_address) == sent


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("%%%not base64%%%", "invalid base64"),
        (base64.b64encode(b"{not json").decode(), "invalid JSON"),
        (base64.b64encode(b'{"x402Version": 2, "payload": 5}').decode(), "malformed payment"),
        (base64.b64encode(b"[1, 2]").decode(), "malformed payment header"),
    ],
)
async def test_malformed_payment_headers(server, payer, runs_file, header, reason):
    runs = agents.count_runs(str(runs_file))
    async with PayingClient(server, payer) as client:
        params = {
            "message": {"role": "user", "parts": [{"kind": "text", "text": "x"}]},
        }
        response = await client.rpc("message/send", params, headers={"PAYMENT-SIGNATURE": header})
    assert response.status_code == 402
    assert reason in response.json()["error"]
    assert agents.count_runs(str(runs_file)) == runs


async def test_legacy_x_payment_header_is_accepted(server, payer):
    from x402.http.utils import encode_payment_signature_header

    async with PayingClient(server, payer) as client:
        payment = await client.sign(await client.payment_required())
        params = {"message": {"role": "user", "parts": [{"kind": "text", "text": "old"}]}}
        headers = {"X-PAYMENT": encode_payment_signature_header(payment)}
        response = await client.rpc("message/send", params, headers=headers)
    assert response.json()["result"]["metadata"]["x402.payment.status"] == "payment-completed"


async def test_bad_params_on_a_paid_method_cost_nothing(server, payer):
    async with PayingClient(server, payer) as client:
        payment = await client.sign(await client.payment_required())
        from x402.http.utils import encode_payment_signature_header

        headers = {"PAYMENT-SIGNATURE": encode_payment_signature_header(payment)}
        response = await client.rpc("message/send", {"message": {}}, headers=headers)
        assert response.json()["error"]["code"] == -32602
        # The same payment still works: nothing was claimed or spent.
        reply = await client.send_text("now properly", payment=payment)
    assert reply.response.json()["result"]["status"]["state"] == "completed"


async def test_settle_answer_after_the_timeout_reproduces_the_orphan(
    devnet, faults_reset, runs_file, tmp_path
):
    db = tmp_path / "orphan.db"
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{db}",
        X402__RECONCILIATION__ENABLED="false",
        X402__SETTLE_TIMEOUT_SECONDS="2",
    )
    payer = await devnet.new_payer(10 * AMOUNT)
    before = await devnet.balance_of(payer.address)
    runs = agents.count_runs(str(runs_file))
    faults_reset.update({"settle_delay_seconds": 5})
    async with (
        inprocess_server(settings_from_env(env), agents.counting) as url,
        PayingClient(url, payer) as client,
    ):
        reply = await client.send_text("too slow")
    task = reply.response.json()["result"]
    assert task["status"]["state"] == "failed"
    assert task["metadata"]["x402.payment.status"] == "payment-failed"
    assert "settle_timeout" in task["metadata"]["x402.payment.error"]
    answer = decode_payment_response_header(reply.response.headers["PAYMENT-RESPONSE"])
    assert not answer.success and "settle_timeout" in (answer.error_reason or "")
    assert agents.count_runs(str(runs_file)) == runs
    # The chain holds the transfer all the same: the silent orphan.
    logs = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert [log["value"] for log in logs] == [AMOUNT]
    assert await devnet.balance_of(payer.address) == before - AMOUNT
    settings = settings_from_env(env)
    storage = await open_storage(settings.storage)
    try:
        record = await storage.get_payment_for_task(task["id"])
    finally:
        await storage.close()
    assert record is not None
    assert record.status is PaymentStatus.FAILED
    assert record.payload is not None and record.payload["payload"]["signature"]
    assert record.requirements is not None and record.requirements["amount"] == str(AMOUNT)


async def test_zz_agent_runs_never_exceed_settled_payments(devnet, runs_file, payers_used):
    settled = 0
    for address in payers_used:
        settled += len(await devnet.transfer_logs(address, devnet.info.pay_to))
    runs = agents.count_runs(str(runs_file))
    assert runs > 0
    assert runs <= settled
