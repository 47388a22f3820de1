"""The verdict: a pure function of (record, evidence, now, rules). No I/O here.

Safety comes first (DESIGN §7). ``orphaned`` needs proof that money reached payTo: the
Transfer on chain with the configured confirmations, or a settle answer from the
facilitator that itself reported success with a transaction hash. A consumed nonce alone
is no proof: ``authorizationState`` and ``/verify`` say the same for an authorization the
payer canceled, so without the chain such a payment ends ``unresolved`` with a hint.
``void`` needs proof it did not and cannot move money (canceled, invalid, or unused while
chain time is already past ``validBefore``). Everything else waits on a backoff schedule,
and every payment reaches a final verdict within ``max_attempts`` probes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_RECIPIENT_MISMATCH,
    ERR_VALID_BEFORE_EXPIRED,
)

from bindu.payments.records import PaymentRecord, PaymentStatus, Receipt
from bindu.reconcile.evidence import (
    ChainEvidence,
    Corrupt,
    Evidence,
    ProbeFailure,
    VerifyEvidence,
)

# Time to the next check after the n-th attempt (seconds); the last one repeats.
BACKOFF_SECONDS = (5.0, 15.0, 60.0, 300.0, 1800.0, 3600.0)

# Where a facilitator's /settle answer is kept on the record (``answers[*].source``), the
# facilitator's words under ``response``: the worker's answer, and one that arrived after
# the worker stopped waiting for it (``late: true``).
SETTLE_ANSWER_SOURCES = frozenset({"settle"})
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
# Without chain proof a consumed nonce is unresolved: this tells the operator what to do.
RPC_HINT = "configure X402__RPC_URLS for {network}, then `bindu reconcile --once` re-judges it"

# /verify reasons that mean the signed authorization can never execute.
NEVER_EXECUTABLE = frozenset(
    {ERR_INVALID_SIGNATURE, ERR_RECIPIENT_MISMATCH, ERR_AUTHORIZATION_VALUE_MISMATCH}
)


class Verdict(StrEnum):
    ORPHANED = "orphaned"
    VOID = "void"
    RETRY = "retry"
    UNRESOLVED = "unresolved"
    # fulfill policy only:
    FULFIL = "fulfil"  # proven paid, work never delivered: run the agent now
    COLLECT = "collect"  # unused and still valid: settle now, then run the agent


@dataclass(frozen=True)
class Rules:
    confirmations: int = 1
    max_attempts: int = 12
    backoff: tuple[float, ...] = BACKOFF_SECONDS
    # Check again this long after validBefore, when expiry becomes provable (seconds).
    expiry_margin_seconds: float = 2.0
    policy: Literal["record", "fulfill"] = "record"
    # fulfill: settle an unused authorization only when it is at least this old (so a lost
    # broadcast would have been mined by now) and this far from validBefore (seconds).
    collect_after_seconds: float = 60.0
    collect_margin_seconds: float = 30.0
    # How long the worker keeps listening for a settle answer after its deadline
    # (X402__LATE_ANSWER_SECONDS): without the chain, that answer may be the only proof.
    late_answer_seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    attempts: int
    receipt: Receipt | None = None
    next_check_at: datetime | None = None


def decide(record: PaymentRecord, evidence: Evidence, now: datetime, rules: Rules) -> Decision:
    attempts = record.attempts + 1
    awaited = _late_answer_awaited(record, evidence, now, rules)
    if awaited is not None:
        reason = (
            "facilitator reports the authorization used or canceled; waiting until "
            f"{awaited.isoformat()} for the settle answer the worker stopped waiting for"
        )
        return Decision(Verdict.RETRY, reason, attempts, next_check_at=awaited)
    verdict, reason, receipt = _judge(record, evidence, rules)
    if rules.policy == "fulfill" and not agent_started(record):
        if verdict is Verdict.ORPHANED:
            return Decision(Verdict.FULFIL, f"{reason}; delivering the work", attempts, receipt)
        if verdict is Verdict.RETRY and _collectable(record, evidence, now, rules):
            return Decision(Verdict.COLLECT, f"{reason}; settling, then delivering", attempts)
    if verdict is Verdict.RETRY:
        if attempts >= rules.max_attempts:
            return Decision(
                Verdict.UNRESOLVED, f"attempts exhausted ({attempts}): {reason}", attempts
            )
        return Decision(
            Verdict.RETRY, reason, attempts, next_check_at=next_check(record, attempts, now, rules)
        )
    return Decision(verdict, reason, attempts, receipt=receipt)


def _late_answer_awaited(
    record: PaymentRecord, evidence: Evidence, now: datetime, rules: Rules
) -> datetime | None:
    """Until when a consumed nonce without proof should wait for a late settle answer
    (None: no answer can still come, so judge now). Only the worker's last settle attempt
    counts, and only if it went unanswered: an answer, late or not, is already here."""
    consumed = (
        isinstance(evidence, VerifyEvidence)
        and not evidence.is_valid
        and evidence.invalid_reason == ERR_NONCE_ALREADY_USED
    )
    if not consumed or settle_proof(record) is not None:
        return None
    settles = [a for a in record.answers if a.get("source") in SETTLE_ANSWER_SOURCES]
    if not settles or settles[-1].get("answered") is not False:
        return None
    try:
        sent = datetime.fromisoformat(str(settles[-1].get("at")))
    except ValueError:
        return None
    if sent.tzinfo is None:
        return None
    until = sent + timedelta(seconds=rules.late_answer_seconds)
    return until if now < until else None


def agent_started(record: PaymentRecord) -> bool:
    """Whether a fulfilment ever reached the agent: then it must never run again."""
    return any(a.get("source") == "fulfil" and a.get("phase") == "agent" for a in record.answers)


def canceled_by_client(record: PaymentRecord) -> bool:
    return any(a.get("source") == "cancel" for a in record.answers)


def settle_in_doubt(record: PaymentRecord) -> bool:
    """Whether a /settle was sent and never answered (a timeout, a lost connection, a
    crash mid-settle): it may still land, so no second /settle may be sent for it."""
    if record.status is PaymentStatus.SETTLING:
        return True
    for answer in record.answers:
        if answer.get("from") == PaymentStatus.SETTLING.value:
            return True  # the reconciler took it over from a dead worker mid-settle
        if answer.get("source") in ("settle", "fulfil") and answer.get("answered") is False:
            return True
    return False


def _collectable(record: PaymentRecord, evidence: Evidence, now: datetime, rules: Rules) -> bool:
    # Settling late is only right for work the client still wants, for an authorization
    # that no broadcast of ours can still be carrying, with time left to settle it.
    if record.settle_tx or canceled_by_client(record) or settle_in_doubt(record):
        return False
    if (now - record.created_at).total_seconds() < rules.collect_after_seconds:
        return False
    if isinstance(evidence, ChainEvidence):
        unused, clock = not evidence.used, evidence.latest_time
    elif isinstance(evidence, VerifyEvidence):
        unused, clock = evidence.is_valid, int(now.timestamp())
    else:
        return False
    return unused and clock + rules.collect_margin_seconds < record.valid_before


def _judge(
    record: PaymentRecord, evidence: Evidence, rules: Rules
) -> tuple[Verdict, str, Receipt | None]:
    if isinstance(evidence, Corrupt):
        return Verdict.UNRESOLVED, f"corrupt payment record: {evidence.reason}", None
    if isinstance(evidence, ChainEvidence):
        # The chain is authoritative where it is configured, even over a success answer.
        return _judge_chain(record, evidence, rules.confirmations)
    answered = settle_proof(record)
    if isinstance(evidence, ProbeFailure):
        if answered is not None and evidence.source != "chain":
            return _answer_proves(record, answered)
        return Verdict.RETRY, f"{evidence.source} unavailable: {evidence.reason}", None
    return _judge_verify(record, evidence, answered)


def settle_proof(record: PaymentRecord) -> str | None:
    """The hash of a stored /settle answer that itself reported success, if any: the
    facilitator's word that the transfer was mined (its own check of the receipt)."""
    for answer in reversed(record.answers):
        if answer.get("source") not in SETTLE_ANSWER_SOURCES:
            continue
        # The answer as the facilitator sent it, kept under its own key.
        response = answer.get("response")
        if not isinstance(response, Mapping):
            continue
        tx = response.get("transaction")
        if response.get("success") is True and isinstance(tx, str) and _TX_HASH.match(tx):
            return tx.lower()
    return None


def _answer_proves(record: PaymentRecord, tx: str) -> tuple[Verdict, str, Receipt | None]:
    reason = f"the facilitator reported the settlement successful in {tx}"
    return Verdict.ORPHANED, reason, record.receipt_for(tx)


def _judge_chain(
    record: PaymentRecord, chain: ChainEvidence, confirmations: int
) -> tuple[Verdict, str, Receipt | None]:
    use = chain.use
    if use is not None and use.canceled:
        return Verdict.VOID, f"authorization canceled by the payer (tx {use.tx_hash})", None
    if not chain.used:
        if chain.latest_time >= record.valid_before:
            return (
                Verdict.VOID,
                f"authorization expired unused (chain time {chain.latest_time} >= "
                f"validBefore {record.valid_before})",
                None,
            )
        return Verdict.RETRY, "authorization unused and still valid", None
    if use is None:
        return Verdict.RETRY, "authorization consumed; its log is not found yet", None
    if not use.transfer_ok:
        reason = f"authorization used in {use.tx_hash} without the expected Transfer"
        return Verdict.RETRY, reason, None
    if chain.confirmations < max(1, confirmations):
        reason = f"transfer {use.tx_hash} has {chain.confirmations}/{confirmations} confirmations"
        return Verdict.RETRY, reason, None
    receipt = record.receipt_for(use.tx_hash, use.block_number)
    return Verdict.ORPHANED, "transfer found on chain", receipt


def _judge_verify(
    record: PaymentRecord, verify: VerifyEvidence, answered: str | None
) -> tuple[Verdict, str, Receipt | None]:
    if verify.is_valid:
        if answered is not None:
            # The facilitator contradicts its own success answer (a reorg, a bad node):
            # neither side is proof now; wait, and end unresolved if it persists.
            reason = f"facilitator reported {answered} settled but /verify says unused"
            return Verdict.RETRY, reason, None
        return Verdict.RETRY, "facilitator: authorization unused and still valid", None
    if answered is not None:
        return _answer_proves(record, answered)
    reason = verify.invalid_reason or "invalid"
    if reason == ERR_NONCE_ALREADY_USED:
        # Used OR canceled: the payer may have canceled its own authorization.
        return (
            Verdict.UNRESOLVED,
            "facilitator reports the authorization used or canceled and no settle answer "
            "proves a transfer; " + RPC_HINT.format(network=record.network),
            None,
        )
    if reason in NEVER_EXECUTABLE:
        return Verdict.VOID, f"authorization can never execute: {reason}", None
    if reason == ERR_VALID_BEFORE_EXPIRED:
        # Past validBefore the facilitator says nothing about use; only the chain could.
        return (
            Verdict.UNRESOLVED,
            "authorization expired and the facilitator cannot tell whether it was used; "
            + RPC_HINT.format(network=record.network),
            None,
        )
    return Verdict.RETRY, f"facilitator: {reason}", None


def next_check(record: PaymentRecord, attempts: int, now: datetime, rules: Rules) -> datetime:
    delay = rules.backoff[min(attempts, len(rules.backoff)) - 1]
    at = now + timedelta(seconds=delay)
    # Expiry is the moment "unused" turns into proof: check right after it.
    expiry = datetime.fromtimestamp(record.valid_before, tz=now.tzinfo) + timedelta(
        seconds=rules.expiry_margin_seconds
    )
    if now < expiry < at:
        return expiry
    return at
