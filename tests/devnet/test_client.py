"""PayingClient against a minimal settle-first paywall that pays through the devnet facilitator.

The paywall stands in for a bindu server (A2A JSON-RPC on POST /, 402 + PAYMENT-REQUIRED,
PAYMENT-SIGNATURE in), so the client is tested on its own, end to end on the chain.
"""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from x402.http.utils import decode_payment_signature_header, encode_payment_required_header
from x402.schemas import NoMatchingRequirementsError, PaymentRequired

from bindu.devnet import PayingClient
from tests.devnet.support import AMOUNT, nonce_of, requirements

pytestmark = pytest.mark.devnet


def paywall(offer, facilitator) -> Starlette:
    async def rpc(request: Request) -> JSONResponse:
        call = await request.json()
        header = request.headers.get("payment-signature")
        if header is None or call["method"] != "message/send":
            return unpaid("payment required")
        payment = decode_payment_signature_header(header)
        verified = await facilitator.verify(payment, offer)
        if not verified.is_valid:
            return unpaid(verified.invalid_reason)
        settled = await facilitator.settle(payment, offer)
        if not settled.success:
            return unpaid(settled.error_reason)
        text = call["params"]["message"]["parts"][0]["text"]
        task = {"kind": "task", "status": {"state": "completed"}, "artifacts": [text]}
        return JSONResponse({"jsonrpc": "2.0", "id": call["id"], "result": task})

    def unpaid(reason) -> JSONResponse:
        required = PaymentRequired(error=reason, accepts=[offer])
        return JSONResponse(
            required.model_dump(mode="json", by_alias=True, exclude_none=True),
            status_code=402,
            headers={"PAYMENT-REQUIRED": encode_payment_required_header(required)},
        )

    return Starlette(routes=[Route("/", rpc, methods=["POST"])])


@pytest.fixture
def offer(devnet, pay_to):
    return requirements(devnet, pay_to)


@pytest.fixture
async def client(offer, facilitator, payer):
    transport = httpx.ASGITransport(app=paywall(offer, facilitator))
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        yield PayingClient("http://paywall", payer, http)


async def test_auto_pays_on_402_and_the_money_moves(devnet, client, offer, payer, pay_to):
    paid = await client.send_text("hello", context_id="ctx-1")

    assert paid.response.status_code == 200
    assert paid.response.json()["result"]["artifacts"] == ["hello"]
    assert paid.payment_required is not None and paid.payment_required.accepts == [offer]
    assert paid.payment is not None and paid.payment.accepted == offer
    assert paid.payment.payload["authorization"]["from"] == payer.address
    assert await devnet.balance_of(pay_to) == AMOUNT
    assert await devnet.authorization_state(payer.address, nonce_of(paid.payment))


async def test_unpaid_and_replayed(devnet, client, offer, pay_to):
    unpaid = await client.send_text("hi", payment=None)
    assert unpaid.response.status_code == 402 and unpaid.payment is None
    assert unpaid.payment_required is not None
    assert unpaid.response.json()["accepts"][0]["payTo"] == pay_to

    first = await client.send_text("once")
    replay = await client.send_text("twice", payment=first.payment)
    assert replay.response.status_code == 402
    assert replay.response.json()["error"] == "invalid_exact_evm_nonce_already_used"
    assert await devnet.balance_of(pay_to) == AMOUNT


async def test_payment_required_and_sign(client, offer, payer):
    required = await client.payment_required()
    assert required.accepts == [offer]
    signed = await client.sign(required)
    assert signed.accepted == offer
    assert int(signed.payload["authorization"]["value"]) == AMOUNT


async def test_sdk_spend_controls_refuse_an_unknown_token(offer, facilitator, payer):
    transport = httpx.ASGITransport(app=paywall(offer, facilitator))
    async with httpx.AsyncClient(transport=transport) as http:
        strict = PayingClient("http://paywall", payer, http, spend_controls={})
        with pytest.raises(NoMatchingRequirementsError, match="spend_controls"):
            await strict.send_text("hi")
