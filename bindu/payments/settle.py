"""Settle-first: send ``/settle`` under a deadline and read the answer by ``error_reason``.

The SDK's HTTPFacilitatorClient raises ``ValueError("Facilitator settle failed (STATUS):
BODY")`` on any non-200 reply, and some hosted facilitators answer ``settlement_pending``
as HTTP 500: the transaction hash then sits inside that error text, so we dig it out
rather than lose it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from x402.schemas import SettleResponse

from bindu.payments.records import wire

SETTLEMENT_PENDING = "settlement_pending"
_HTTP_ERROR = re.compile(r"^Facilitator (?:settle|verify) failed \((\d{3})\): (.*)$", re.S)
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")


class SettleKind(StrEnum):
    SETTLED = "settled"  # success=true: money moved, receipt known
    PENDING = "pending"  # broadcast, not confirmed: hash known, outcome open
    FAILED = "failed"  # refused, errored or timed out: outcome unknown until reconciled


@dataclass(frozen=True)
class SettleOutcome:
    kind: SettleKind
    reason: str | None
    transaction: str | None
    answer: dict[str, Any]  # what to keep on the record (never the signed payload)
    # False when no answer came (timeout, transport error): the settle may still be landing.
    answered: bool = True


def _tx(value: Any) -> str | None:
    return value if isinstance(value, str) and _TX_HASH.match(value) else None


def from_response(response: SettleResponse) -> SettleOutcome:
    # The SDK never serializes extension_responses (its side channel): nothing to drop.
    answer = wire(response)
    tx = _tx(response.transaction)
    if response.success:
        return SettleOutcome(SettleKind.SETTLED, None, tx, answer)
    reason = response.error_reason or "settle_failed"
    if reason == SETTLEMENT_PENDING and tx:
        return SettleOutcome(SettleKind.PENDING, reason, tx, answer)
    return SettleOutcome(SettleKind.FAILED, reason, tx, answer)


def http_error_body(exc: Exception) -> tuple[int, str, dict[str, Any] | None] | None:
    """(status, body, JSON object or None) of an SDK error for a non-200 reply, else None."""
    match = _HTTP_ERROR.match(str(exc))
    if match is None:
        return None
    status, body = int(match.group(1)), match.group(2)
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        return status, body, None
    return status, body, doc if isinstance(doc, dict) else None


def verify_refusal(exc: Exception) -> str | None:
    """The invalidReason of a /verify refused with a non-200 status (some facilitators
    answer an invalid payment with HTTP 400 and the usual VerifyResponse body)."""
    parsed = http_error_body(exc)
    if parsed is None or parsed[2] is None or parsed[0] >= 500:
        return None
    doc = parsed[2]
    reason = doc.get("invalidReason")
    return str(reason) if doc.get("isValid") is False and reason else None


def from_http_error(exc: Exception) -> SettleOutcome:
    """Read an SDK error for a non-200 reply; keep any hash and reason the body carries."""
    parsed = http_error_body(exc)
    if parsed is None:
        # No HTTP answer: the request may have reached the facilitator all the same.
        reason = f"{type(exc).__name__}: {exc}"[:300]
        return SettleOutcome(SettleKind.FAILED, reason, None, {"error": reason}, answered=False)
    status, body, doc = parsed
    if doc is not None:
        tx = _tx(doc.get("transaction"))
        reason = doc.get("errorReason") or doc.get("error") or f"http_{status}"
        answer = {"httpStatus": status, **{k: v for k, v in doc.items() if k != "payload"}}
        if reason == SETTLEMENT_PENDING and tx:
            return SettleOutcome(SettleKind.PENDING, reason, tx, answer)
        return SettleOutcome(SettleKind.FAILED, str(reason)[:300], tx, answer)
    reason = f"http_{status}: {body[:200]}"
    return SettleOutcome(SettleKind.FAILED, reason, None, {"httpStatus": status, "error": reason})


async def settle_with_deadline(settle: Any, timeout: float) -> SettleOutcome:
    """Await ``settle`` (a coroutine returning SettleResponse) for at most ``timeout`` s."""
    outcome, _ = await settle_listening(settle, timeout, late_seconds=0.0)
    return outcome


async def settle_listening(
    settle: Coroutine[Any, Any, Any], timeout: float, *, late_seconds: float
) -> tuple[SettleOutcome, asyncio.Task[SettleOutcome | None] | None]:
    """Await ``settle`` for at most ``timeout`` s. When the deadline passes, the HTTP call is
    not cancelled: the second value is a task that keeps listening ``late_seconds`` more and
    resolves to the late answer (None if none came; the call is then cancelled). The answer
    often is still on its way, and for a facilitator-only deployment it is the cheapest
    proof of payment there is (DESIGN §7)."""
    call = asyncio.ensure_future(settle)
    try:
        done, _ = await asyncio.wait({call}, timeout=timeout)
    except asyncio.CancelledError:
        call.cancel()
        raise
    if call in done:
        return _read(call), None
    reason = f"settle_timeout: no answer within {timeout:g}s"
    timed_out = SettleOutcome(SettleKind.FAILED, reason, None, {"error": reason}, answered=False)
    if late_seconds <= 0:
        call.cancel()
        return timed_out, None
    return timed_out, asyncio.create_task(_late(call, late_seconds), name="settle:late-answer")


async def _late(call: asyncio.Future[Any], seconds: float) -> SettleOutcome | None:
    try:
        done, _ = await asyncio.wait({call}, timeout=seconds)
    finally:
        if not call.done():
            call.cancel()
    return _read(call) if call in done else None


def _read(call: asyncio.Future[Any]) -> SettleOutcome:
    try:
        response = call.result()
    except asyncio.CancelledError:
        reason = "settle_cancelled"
        return SettleOutcome(SettleKind.FAILED, reason, None, {"error": reason}, answered=False)
    except Exception as exc:  # transport errors, HTTP errors, malformed answers
        return from_http_error(exc)
    return from_response(response)
