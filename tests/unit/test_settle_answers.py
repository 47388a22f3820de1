"""Reading facilitator answers by error_reason, including the ones hosted facilitators send
as non-200 replies (the SDK raises for those; the hash and reason sit in the text)."""

from __future__ import annotations

import json

from x402.schemas import SettleResponse

from bindu.payments.settle import (
    SettleKind,
    from_http_error,
    from_response,
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
