"""Reading facilitator answers by error_reason, including the ones hosted facilitators send
as non-200 replies (the SDK raises for those; the hash and reason sit in the text)."""

from __future__ import annotations

import asyncio
import json

from x402.schemas import SettleResponse

from bindu.payments.settle import (
    SettleKind,
    from_http_error,
    from_response,
    settle_with_deadline,
    verify_refusal,
)

TX = "0x" + "ab" * 32


def sdk_error(status: int, body: object) -> ValueError:
    text = body if isinstance(body, str) else json.dumps(body)
    return ValueError(f"Facilitator settle failed ({status}): {text}")


def test_success_is_settled():
    out = from_response(SettleResponse(success=True, transaction=TX, network="eip155:1"))
    assert (out.kind, out.transaction) == (SettleKind.SETTLED, TX)


def test_pending_keeps_the_hash():
    answer = SettleResponse(
        success=False, error_reason="settlement_pending", transaction=TX, network="eip155:1"
    )
    out = from_response(answer)
    assert (out.kind, out.transaction) == (SettleKind.PENDING, TX)


def test_pending_without_a_hash_is_a_plain_failure():
    answer = SettleResponse(
        success=False, error_reason="settlement_pending", transaction="", network="eip155:1"
    )
    assert from_response(answer).kind is SettleKind.FAILED


def test_failure_keeps_a_reverted_hash_as_evidence():
    answer = SettleResponse(
        success=False, error_reason="transaction_failed", transaction=TX, network="eip155:1"
    )
    out = from_response(answer)
    assert (out.kind, out.reason, out.transaction) == (SettleKind.FAILED, "transaction_failed", TX)


def test_pending_sent_as_http_500_is_still_pending_with_its_hash():
    body = {"success": False, "errorReason": "settlement_pending", "transaction": TX}
    out = from_http_error(sdk_error(500, body))
    assert (out.kind, out.transaction) == (SettleKind.PENDING, TX)
    assert out.answer["httpStatus"] == 500


def test_http_error_with_a_plain_body():
    out = from_http_error(sdk_error(502, "<html>bad gateway</html>"))
    assert out.kind is SettleKind.FAILED
    assert out.reason is not None and out.reason.startswith("http_502")
    assert out.transaction is None


def test_a_garbage_hash_is_not_kept():
    body = {"success": False, "errorReason": "settlement_pending", "transaction": "0x12"}
    assert from_http_error(sdk_error(500, body)).kind is SettleKind.FAILED


def test_transport_errors_are_failures():
    out = from_http_error(ConnectionError("refused"))
    assert out.kind is SettleKind.FAILED and "ConnectionError" in (out.reason or "")


def test_verify_refusal_reads_4xx_answers_only():
    reason = "invalid_exact_evm_nonce_already_used"
    four = ValueError(
        f'Facilitator verify failed (400): {{"isValid": false, "invalidReason": "{reason}"}}'
    )
    assert verify_refusal(four) == reason
    five = ValueError('Facilitator verify failed (500): {"isValid": false, "invalidReason": "x"}')
    assert verify_refusal(five) is None
    assert verify_refusal(ValueError("Facilitator verify failed (400): not json")) is None
    assert verify_refusal(TimeoutError()) is None


# What is kept on the record, exactly: the facilitator's wire names, nothing empty.


def test_a_success_answer_is_kept_as_sent():
    answer = SettleResponse(
        success=True, transaction=TX, network="eip155:1", payer="0xabc", amount="7"
    )
    out = from_response(answer)
    assert out.reason is None
    assert out.answer == {
        "success": True,
        "transaction": TX,
        "network": "eip155:1",
        "payer": "0xabc",
        "amount": "7",
    }


def test_a_failure_keeps_its_reason_under_the_wire_name():
    answer = SettleResponse(
        success=False, error_reason="insufficient_funds", transaction="", network="eip155:1"
    )
    out = from_response(answer)
    assert (out.kind, out.reason, out.transaction) == (
        SettleKind.FAILED,
        "insufficient_funds",
        None,
    )
    assert out.answer == {
        "success": False,
        "errorReason": "insufficient_funds",
        "transaction": "",
        "network": "eip155:1",
    }


def test_a_failure_without_a_reason_is_named():
    answer = SettleResponse(success=False, transaction="", network="eip155:1")
    out = from_response(answer)
    assert (out.kind, out.reason) == (SettleKind.FAILED, "settle_failed")
    assert out.answer == {"success": False, "transaction": "", "network": "eip155:1"}


def test_pending_keeps_its_reason_and_answer():
    answer = SettleResponse(
        success=False, error_reason="settlement_pending", transaction=TX, network="eip155:1"
    )
    out = from_response(answer)
    assert out.reason == "settlement_pending"
    assert out.answer["errorReason"] == "settlement_pending"


def test_an_http_error_keeps_the_body_but_never_the_signed_payload():
    body = {
        "success": False,
        "errorReason": "settlement_pending",
        "transaction": TX,
        "payload": {"signature": "0x00"},
    }
    out = from_http_error(sdk_error(500, body))
    assert (out.kind, out.reason, out.transaction) == (
        SettleKind.PENDING,
        "settlement_pending",
        TX,
    )
    assert out.answer == {
        "httpStatus": 500,
        "success": False,
        "errorReason": "settlement_pending",
        "transaction": TX,
    }


def test_an_http_error_reason_falls_back_to_error_then_status():
    out = from_http_error(sdk_error(500, {"error": "boom", "transaction": TX}))
    assert (out.kind, out.reason, out.transaction) == (SettleKind.FAILED, "boom", TX)
    assert out.answer == {"httpStatus": 500, "error": "boom", "transaction": TX}
    out = from_http_error(sdk_error(503, {"success": False}))
    assert (out.kind, out.reason, out.transaction) == (SettleKind.FAILED, "http_503", None)


def test_an_http_error_reason_is_bounded():
    out = from_http_error(sdk_error(500, {"errorReason": "x" * 1000}))
    assert out.reason == "x" * 300


def test_a_json_body_that_is_not_an_object_is_a_plain_body():
    out = from_http_error(sdk_error(500, [1, 2]))
    assert (out.kind, out.reason) == (SettleKind.FAILED, "http_500: [1, 2]")
    assert out.answer == {"httpStatus": 500, "error": "http_500: [1, 2]"}


def test_a_plain_body_is_bounded_and_kept():
    out = from_http_error(sdk_error(502, "y" * 1000))
    reason = "http_502: " + "y" * 200
    assert out.reason == reason
    assert out.answer == {"httpStatus": 502, "error": reason}


def test_a_transport_error_is_kept_bounded():
    out = from_http_error(ConnectionError("z" * 1000))
    reason = ("ConnectionError: " + "z" * 1000)[:300]
    assert (out.kind, out.reason, out.transaction) == (SettleKind.FAILED, reason, None)
    assert out.answer == {"error": reason}


def test_verify_refusal_needs_is_valid_false_and_a_reason():
    def refusal(body: object) -> str | None:
        return verify_refusal(ValueError(f"Facilitator verify failed (400): {json.dumps(body)}"))

    assert refusal({"isValid": True, "invalidReason": "x"}) is None
    assert refusal({"isValid": False}) is None
    assert refusal({"isValid": False, "invalidReason": ""}) is None
    assert refusal({"isValid": False, "invalidReason": "r"}) == "r"
    assert refusal([1]) is None
    # 499 is still the facilitator judging the payment; 500 is the facilitator failing.
    assert (
        verify_refusal(
            ValueError('Facilitator verify failed (499): {"isValid": false, "invalidReason": "r"}')
        )
        == "r"
    )


# settle_with_deadline: the one place a settle answer, an error and silence are told apart.


async def test_settle_with_deadline_reads_an_answer():
    async def answers() -> SettleResponse:
        return SettleResponse(success=True, transaction=TX, network="eip155:1")

    out = await settle_with_deadline(answers(), 5)
    assert (out.kind, out.transaction) == (SettleKind.SETTLED, TX)


async def test_settle_with_deadline_gives_up_at_the_deadline():
    never = asyncio.Event()

    async def silent() -> SettleResponse:
        await never.wait()
        raise AssertionError("unreachable")

    async with asyncio.timeout(10):  # a deadline that no longer holds fails, not hangs
        out = await settle_with_deadline(silent(), 0.05)
    reason = "settle_timeout: no answer within 0.05s"
    assert (out.kind, out.reason, out.transaction) == (SettleKind.FAILED, reason, None)
    assert out.answer == {"error": reason}
    assert out.answered is False


async def test_settle_with_deadline_reads_an_error_reply():
    async def refused() -> SettleResponse:
        raise sdk_error(500, {"errorReason": "settlement_pending", "transaction": TX})

    out = await settle_with_deadline(refused(), 5)
    assert (out.kind, out.transaction) == (SettleKind.PENDING, TX)
