"""The paywall's local checks, in process, on payments signed for exactly the field under test.

Each refusal is judged before any storage write or facilitator call; each boundary is
checked from both sides on the clock the request carries (``admit``'s ``now``). respx
answers only /supported, /verify and /settle, as a hosted facilitator would.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
from datetime import UTC, datetime

import httpx
import pytest
import respx
from eth_account import Account
from eth_utils import to_checksum_address
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Authorization, ExactEIP3009Payload
from x402.schemas import PaymentPayload

from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.paywall import REPLAYED, Admission, Paywall, Refusal
from bindu.payments.records import PaymentStatus
from bindu.payments.settle import SettleKind
from bindu.settings import load_settings
from bindu.storage.memory import MemoryStorage

FACILITATOR = "http://facilitator.test"
# Letters in both addresses, so that a check comparing them in the wrong case would show.
ASSET = "0x" + "cd" * 20
PAY_TO = "0x" + "ab" * 20
PRICE = 10_000
MAX_TIMEOUT = 240  # not the SDK's default, so that dropping it would show
NETWORK = "eip155:31337"
SUPPORTED = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": NETWORK}]}
NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
TX = "0x" + "ef" * 32
PAYER = Account.create()


SETTINGS = load_settings(
    _env_file=None,
    x402={
        "facilitator_url": FACILITATOR,
        "pay_to": PAY_TO,
        "asset": ASSET,
        "network": NETWORK,
        "amount": PRICE,
        "max_timeout_seconds": MAX_TIMEOUT,
        "verify_timeout_seconds": 0.2,
        "settle_timeout_seconds": 0.2,
    },
).x402


@pytest.fixture(scope="module")
async def facilitator():
    # One client for the module: each new one costs a TLS context, the bulk of a test here.
    client = make_facilitator_client(SETTINGS)
    yield client
    await client.aclose()


@pytest.fixture
async def paywall(facilitator):
    storage = MemoryStorage()
    await storage.open()
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{FACILITATOR}/supported").respond(200, json=SUPPORTED)
        mock.post(f"{FACILITATOR}/verify").respond(200, json={"isValid": True})
        wall = Paywall(SETTINGS, storage, facilitator, "http://s/")
        assert await wall.ready()
        yield wall, mock, storage
    await storage.close()


def payment(wall: Paywall, signature: str | None = "sign", **fields: str) -> PaymentPayload:
    """A payment for the wall's requirements whose authorization has ``fields`` changed,
    signed by PAYER over exactly those fields (so only the field under test is wrong)."""
    requirements = wall.requirements[0]
    auth = ExactEIP3009Authorization(
        from_address=PAYER.address,
        to=to_checksum_address(PAY_TO),  # as wallets write it: mixed case
        value=str(PRICE),
        valid_after="0",
        valid_before=str(T + 60),
        nonce="0x" + secrets.token_hex(32),
    )
    auth = dataclasses.replace(auth, **fields)
    if signature == "sign":
        try:
            digest = hash_eip3009_authorization(auth, 31337, requirements.asset, "USD Coin", "2")
            signature = "0x" + PAYER.unsafe_sign_hash(digest).signature.hex().removeprefix("0x")
        except (ValueError, TypeError):
            # Fields that do not encode cannot be signed; the checks refuse them before that.
            signature = "0x" + "11" * 65
    inner = ExactEIP3009Payload(authorization=auth, signature=signature).to_dict()
    return PaymentPayload(x402_version=2, accepted=requirements, payload=inner)


def header(payload: PaymentPayload, name: str = "PAYMENT-SIGNATURE") -> dict[str, str]:
    return {name: encode_payment_signature_header(payload)}


def raw_header(text: str) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": base64.b64encode(text.encode()).decode()}


async def test_an_honest_payment_is_claimed_with_its_fields_normalised(paywall):
    wall, mock, storage = paywall
    nonce = "0x" + "AB" * 32
    paid = payment(wall, nonce=nonce, valid_after=str(T - 5), valid_before=str(T + 99))
    out = await wall.admit(header(paid), "task-7", NOW)
    assert isinstance(out, Admission)
    assert out.payload == paid
    assert out.requirements == wall.requirements[0]
    record = out.record
    assert (record.task_id, record.status, record.network) == (
        "task-7",
        PaymentStatus.CLAIMED,
        NETWORK,
    )
    assert (record.asset, record.pay_to, record.payer) == (ASSET, PAY_TO, PAYER.address.lower())
    assert (record.amount, record.nonce) == (str(PRICE), nonce.lower())
    assert (record.valid_after, record.valid_before) == (T - 5, T + 99)
    assert record.payload == paid.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert record.payload["x402Version"] == 2
    assert record.requirements == wall.requirements[0].model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    assert record.requirements["payTo"] == PAY_TO
    assert (record.created_at, record.updated_at) == (NOW, NOW)
    assert record.id
    assert await storage.list_payments() == [record]
    assert mock.routes[1].call_count == 1  # /verify, once


async def test_a_header_wrapped_over_lines_is_read(paywall):
    wall, _, _ = paywall
    encoded = encode_payment_signature_header(payment(wall))
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    out = await wall.admit({"PAYMENT-SIGNATURE": wrapped}, "t", NOW)
    assert isinstance(out, Admission)


async def test_the_v1_header_name_is_read_too(paywall):
    wall, _, _ = paywall
    out = await wall.admit(header(payment(wall), "X-PAYMENT"), "t", NOW)
    assert isinstance(out, Admission)


async def test_no_header_is_payment_required(paywall):
    wall, _, _ = paywall
    assert await wall.admit({}, "t", NOW) == Refusal(402, "payment required")


WRONG = {
    "to": ("0x" + "12" * 20, "payment invalid: authorization pays the wrong recipient"),
    "overpaid": (str(PRICE + 1), "payment invalid: authorization value does not match the price"),
    "underpaid": (
        str(PRICE - 1),
        "payment invalid: authorization value does not match the price",
    ),
    "expired": (str(T + 5), "payment invalid: authorization expired"),
    "long-expired": (str(T - 1), "payment invalid: authorization expired"),
    "not-yet-valid": (str(T + 1), "payment invalid: authorization not yet valid"),
    "too-long": (
        str(T + MAX_TIMEOUT + 61),
        "payment invalid: authorization valid longer than maxTimeoutSeconds",
    ),
    "short-nonce": ("0x" + "ab" * 31, "malformed payment: nonce must be 32 bytes of hex"),
    "long-nonce": ("0x" + "ab" * 33, "malformed payment: nonce must be 32 bytes of hex"),
    "nonce-without-0x": ("0X" + "ab" * 32, "malformed payment: nonce must be 32 bytes of hex"),
    "non-hex-nonce": (
        "0x" + "zz" * 32,
        "malformed payment: authorization fields must be integers and a hex nonce",
    ),
    "non-integer-value": (
        "ten",
        "malformed payment: authorization fields must be integers and a hex nonce",
    ),
    "non-integer-valid-after": (
        "soon",
        "malformed payment: authorization fields must be integers and a hex nonce",
    ),
    "non-integer-valid-before": (
        "later",
        "malformed payment: authorization fields must be integers and a hex nonce",
    ),
}
FIELD = {
    "to": "to",
    "overpaid": "value",
    "underpaid": "value",
    "expired": "valid_before",
    "long-expired": "valid_before",
    "not-yet-valid": "valid_after",
    "too-long": "valid_before",
    "short-nonce": "nonce",
    "long-nonce": "nonce",
    "nonce-without-0x": "nonce",
    "non-hex-nonce": "nonce",
    "non-integer-value": "value",
    "non-integer-valid-after": "valid_after",
    "non-integer-valid-before": "valid_before",
}


@pytest.mark.parametrize("case", list(WRONG))
async def test_a_locally_wrong_payment_costs_no_write_and_no_facilitator_call(paywall, case):
    wall, mock, storage = paywall
    value, reason = WRONG[case]
    paid = payment(wall, **{FIELD[case]: value})
    assert await wall.admit(header(paid), "t", NOW) == Refusal(402, reason)
    assert mock.routes[1].call_count == 0
    assert await storage.list_payments() == []


async def test_a_payment_without_signature_is_malformed(paywall):
    wall, mock, _ = paywall
    paid = payment(wall, signature=None)
    refusal = Refusal(402, "malformed payment: signature missing")
    assert await wall.admit(header(paid), "t", NOW) == refusal
    assert mock.routes[1].call_count == 0


@pytest.mark.parametrize(
    "fields",
    [
        {"valid_before": str(T + 6)},  # just enough time left to settle
        {"valid_after": str(T)},  # valid from this very second
        {"valid_before": str(T + MAX_TIMEOUT + 60)},  # the longest window allowed
    ],
    ids=["least-time-left", "valid-from-now", "longest-window"],
)
async def test_boundaries_are_admitted(paywall, fields):
    wall, _, _ = paywall
    assert isinstance(await wall.admit(header(payment(wall, **fields)), "t", NOW), Admission)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"isValid": False, "invalidReason": "insufficient_funds"}, "insufficient_funds"),
        ({"isValid": False}, "invalid payment"),
    ],
)
async def test_a_verify_refusal_releases_the_nonce_claim(paywall, answer, reason):
    wall, mock, storage = paywall
    mock.routes[1].respond(200, json=answer)
    paid = header(payment(wall))
    assert await wall.admit(paid, "t1", NOW) == Refusal(402, f"payment invalid: {reason}")
    assert await storage.list_payments() == []
    # Released, not burned: the same authorization can be presented again.
    mock.routes[1].respond(200, json={"isValid": True})
    assert isinstance(await wall.admit(paid, "t2", NOW), Admission)


async def test_a_replay_is_refused_without_asking_the_facilitator(paywall):
    wall, mock, storage = paywall
    paid = header(payment(wall))
    first = await wall.admit(paid, "t1", NOW)
    assert isinstance(first, Admission)
    assert await wall.admit(paid, "t2", NOW) == Refusal(402, REPLAYED)
    assert mock.routes[1].call_count == 1
    assert await storage.list_payments() == [first.record]


@pytest.mark.parametrize("reply", ["unreachable", "silent"])
async def test_an_unanswered_verify_is_a_503_and_nothing_is_kept(paywall, reply):
    wall, mock, storage = paywall
    never = asyncio.Event()

    async def silent(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    mock.routes[1].side_effect = httpx.ConnectError("refused") if reply == "unreachable" else silent
    async with asyncio.timeout(10):  # a verify deadline that no longer holds fails, not hangs
        out = await wall.admit(header(payment(wall)), "t", NOW)
    assert out == Refusal(503, "payment facilitator unavailable; nothing was charged")
    assert await storage.list_payments() == []


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"PAYMENT-SIGNATURE": "%%% not base64"}, "malformed payment header: invalid base64"),
        (raw_header("not json"), "malformed payment header: invalid JSON"),
        (
            {"PAYMENT-SIGNATURE": base64.b64encode(b"\xff\xfe{binary").decode()},
            "malformed payment header: invalid base64",
        ),
        (raw_header('{"x402Version": 2}'), "malformed payment header: invalid content"),
        (raw_header("[1, 2]"), "malformed payment header: not an x402 payment payload"),
        (
            raw_header(
                json.dumps({"x402Version": 1, "scheme": "exact", "network": "base", "payload": {}})
            ),
            "x402 v1 payment payloads are not accepted; send x402Version 2",
        ),
        # Hostile JSON: refused by the strict reader, never a RecursionError or a crash.
        (raw_header("[" * 100_000), "malformed payment header: invalid JSON"),
        (
            raw_header('{"x402Version": ' + "9" * 5000 + "}"),
            "malformed payment header: invalid JSON",
        ),
        (
            raw_header('{"x402Version": 2, "x": "\\ud800"}'),
            "malformed payment header: invalid JSON",
        ),
        (raw_header('{"x402Version": NaN}'), "malformed payment header: invalid JSON"),
    ],
    ids=[
        "base64",
        "json",
        "not-text",
        "content",
        "not-an-object",
        "v1",
        "deep",
        "digits",
        "surrogate",
        "nan",
    ],
)
async def test_a_malformed_header_is_named(paywall, raw, reason):
    wall, mock, _ = paywall
    assert await wall.admit(raw, "t", NOW) == Refusal(402, reason)
    assert mock.routes[1].call_count == 0


@pytest.mark.parametrize(
    "inner",
    [
        {"authorization": "not an object", "signature": "0x00"},
        {"authorization": {"from": 7, "to": PAY_TO, "value": "1", "validAfter": "0",
                           "validBefore": "1", "nonce": "0x00"}},
        {"authorization": {"from": "0x" + "33" * 20, "to": 7, "value": "1",
                           "validAfter": "0", "validBefore": "1", "nonce": "0x00"}},
        {"authorization": {"from": "0x" + "33" * 20, "to": PAY_TO, "value": "1",
                           "validAfter": "0", "validBefore": "1", "nonce": 7}},
    ],
    ids=["not-an-object", "from", "to", "nonce"],
)  # fmt: skip
async def test_a_payload_that_is_not_an_eip3009_authorization_is_named(paywall, inner):
    wall, _, _ = paywall
    paid = (payment(wall)).model_copy(update={"payload": inner})
    out = await wall.admit(header(paid), "t", NOW)
    assert out == Refusal(402, "malformed payment: not an EIP-3009 authorization")


async def test_a_payment_for_other_requirements_is_refused(paywall):
    wall, _, _ = paywall
    paid = payment(wall)
    other = paid.accepted.model_copy(update={"amount": "1"})
    out = await wall.admit(header(paid.model_copy(update={"accepted": other})), "t", NOW)
    assert out == Refusal(402, "payment does not match the accepted requirements")


async def test_ready_retries_until_the_facilitator_answers_then_remembers():
    settings = load_settings(
        _env_file=None,
        x402={
            "facilitator_url": FACILITATOR,
            "pay_to": PAY_TO,
            "asset": ASSET,
            "network": NETWORK,
        },
    )
    with respx.mock(assert_all_called=False) as mock:
        supported = mock.get(f"{FACILITATOR}/supported")
        supported.side_effect = httpx.ConnectError("down")
        wall = Paywall(settings.x402, MemoryStorage(), make_facilitator_client(settings.x402), "u")
        assert not await wall.ready()
        with pytest.raises(RuntimeError, match="paywall not ready"):
            _ = wall.requirements
        supported.side_effect = None
        supported.respond(200, json=SUPPORTED)
        # Callers racing the first fetch all see it done, and it is done once.
        assert await asyncio.gather(wall.ready(), wall.ready(), wall.ready()) == [True] * 3
        assert await wall.ready()
        assert supported.call_count == 2
        await wall.facilitator.aclose()


async def test_the_402_body_names_what_to_pay_and_for_what(paywall):
    wall, _, _ = paywall
    body, _ = await wall.payment_required("payment required")
    assert body == {
        "x402Version": 2,
        "error": "payment required",
        "resource": {
            "url": "http://s/",
            "description": "A2A message/send",
            "mimeType": "application/json",
        },
        "accepts": [
            {
                "scheme": "exact",
                "network": NETWORK,
                "asset": ASSET,
                "amount": str(PRICE),
                "payTo": PAY_TO,
                "maxTimeoutSeconds": MAX_TIMEOUT,
                "extra": {"name": "USD Coin", "version": "2"},
            }
        ],
    }


async def test_settle_sends_the_payment_and_reads_the_answer(paywall):
    wall, mock, _ = paywall
    settle = mock.post(f"{FACILITATOR}/settle")
    settle.respond(200, json={"success": True, "transaction": TX, "network": NETWORK})
    paid = payment(wall)
    out, late = await wall.settle(paid, wall.requirements[0])
    assert (out.kind, out.transaction) == (SettleKind.SETTLED, TX)
    assert late is None  # answered in time: nothing to listen for
    sent = json.loads(settle.calls.last.request.content)
    assert sent["paymentPayload"]["payload"] == paid.payload
    assert sent["paymentRequirements"]["payTo"] == PAY_TO


async def test_settle_gives_up_at_the_settle_deadline(paywall):
    wall, mock, _ = paywall
    never = asyncio.Event()

    async def silent(request: httpx.Request) -> httpx.Response:
        await never.wait()
        raise AssertionError("unreachable")

    mock.post(f"{FACILITATOR}/settle").side_effect = silent
    async with asyncio.timeout(10):  # a settle deadline that no longer holds fails, not hangs
        out, late = await wall.settle(payment(wall), wall.requirements[0])
    assert (out.kind, out.reason) == (SettleKind.FAILED, "settle_timeout: no answer within 0.2s")
    assert out.answered is False
    # The call goes on past the deadline (the late-answer window); here it never answers.
    assert late is not None and not late.done()
    late.cancel()
