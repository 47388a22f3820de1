"""Paywall answers for facilitator replies no real local component gives on demand
(respx stands in for a hosted facilitator)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
import respx
from eth_account import Account
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentRequired

from bindu.a2a import utcnow
from bindu.devnet import PayingClient
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.paywall import Admission, Paywall, Refusal
from bindu.settings import load_settings
from bindu.storage.memory import MemoryStorage

FACILITATOR = "http://facilitator.test"
ASSET = "0x" + "11" * 20
PAY_TO = "0x" + "22" * 20
SUPPORTED = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:31337"}]}


@pytest.fixture
async def paywall():
    settings = load_settings(
        _env_file=None,
        x402={
            "facilitator_url": FACILITATOR,
            "pay_to": PAY_TO,
            "asset": ASSET,
            "network": "eip155:31337",
        },
    )
    storage = MemoryStorage()
    await storage.open()
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{FACILITATOR}/supported").respond(200, json=SUPPORTED)
        wall = Paywall(settings.x402, storage, make_facilitator_client(settings.x402), "http://s/")
        assert await wall.ready()
        yield wall, mock, storage
        await wall.facilitator.aclose()
    await storage.close()


async def signed_header(wall: Paywall) -> dict[str, str]:
    async with PayingClient("http://server.test", Account.create()) as client:
        payload = await client.sign(PaymentRequired(x402_version=2, accepts=wall.requirements))
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}


async def test_verify_refused_with_http_400_is_a_402(paywall):
    wall, mock, _ = paywall
    body = {"isValid": False, "invalidReason": "invalid_exact_evm_insufficient_balance"}
    mock.post(f"{FACILITATOR}/verify").respond(400, json=body)
    headers = await signed_header(wall)
    out = await wall.admit(headers, "task-1", utcnow())
    assert out == Refusal(402, "payment invalid: invalid_exact_evm_insufficient_balance")
    # The claim was released: the same payment may be tried again.
    mock.post(f"{FACILITATOR}/verify").respond(200, json={"isValid": True})
    assert isinstance(await wall.admit(headers, "task-2", utcnow()), Admission)


@pytest.mark.parametrize(
    "reply",
    [
        httpx.Response(500, json={"error": "boom"}),
        httpx.Response(200, text="<html>not json</html>"),
        httpx.ConnectError("refused"),
    ],
)
async def test_verify_unavailable_is_a_503_and_nothing_is_kept(paywall, reply):
    wall, mock, storage = paywall
    route = mock.post(f"{FACILITATOR}/verify")
    if isinstance(reply, Exception):
        route.side_effect = reply
    else:
        route.return_value = reply
    out = await wall.admit(await signed_header(wall), "task-1", utcnow())
    assert isinstance(out, Refusal) and out.status == 503
    assert await storage.list_payments() == []


async def test_payment_required_header_matches_the_body(paywall):
    wall, _, _ = paywall
    body, headers = await wall.payment_required("payment required")
    assert json.loads(base64.b64decode(headers["PAYMENT-REQUIRED"])) == body
