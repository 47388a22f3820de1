"""The reason every verdict carries, word for word: the operator reads it in the alert, the
payment list and the runbook, so a reason that drifts or goes blank is a defect."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bindu.reconcile.evidence import Corrupt, ProbeFailure, VerifyEvidence
from bindu.reconcile.verdict import Rules, Verdict, decide
from tests.unit.test_verdict import NOW, RULES, TX, T, chain, record, settled, use

NONCE_USED = "invalid_exact_evm_nonce_already_used"
EXPIRED = "invalid_exact_evm_payload_authorization_valid_before"
HINT = "configure X402__RPC_URLS for eip155:31337, then `bindu reconcile --once` re-judges it"
ANSWERED = [settled()]

CASES = {
    "corrupt": (record(), Corrupt("payload is not JSON"), Verdict.UNRESOLVED,
                "corrupt payment record: payload is not JSON"),
    "facilitator-down": (record(), ProbeFailure("facilitator", "ConnectError"), Verdict.RETRY,
                         "facilitator unavailable: ConnectError"),
    "chain-down-despite-answer": (record(answers=ANSWERED), ProbeFailure("chain", "timeout"),
                                  Verdict.RETRY, "chain unavailable: timeout"),
    "answer-without-probe": (record(answers=ANSWERED), ProbeFailure("facilitator", "x"),
                             Verdict.ORPHANED,
                             f"the facilitator reported the settlement successful in {TX}"),
    "canceled": (record(), chain(use=use(canceled=True, transfer_ok=False)), Verdict.VOID,
                 f"authorization canceled by the payer (tx {TX})"),
    "expired-unused": (record(valid_before=T - 10), chain(used=False, latest_time=T),
                       Verdict.VOID,
                       f"authorization expired unused (chain time {T} >= validBefore {T - 10})"),
    "unused": (record(), chain(used=False), Verdict.RETRY,
               "authorization unused and still valid"),
    "no-log-yet": (record(), chain(use=None), Verdict.RETRY,
                   "authorization consumed; its log is not found yet"),
    "no-transfer": (record(), chain(use=use(transfer_ok=False)), Verdict.RETRY,
                    f"authorization used in {TX} without the expected Transfer"),
    "unconfirmed": (record(), chain(use=use(block=100)), Verdict.RETRY,
                    f"transfer {TX} has 1/2 confirmations"),
    "on-chain": (record(), chain(use=use(block=99)), Verdict.ORPHANED,
                 "transfer found on chain"),
    "verify-unused": (record(), VerifyEvidence(True, None), Verdict.RETRY,
                      "facilitator: authorization unused and still valid"),
    "verify-contradicts-answer": (record(answers=ANSWERED), VerifyEvidence(True, None),
                                  Verdict.RETRY,
                                  f"facilitator reported {TX} settled but /verify says unused"),
    "verify-used-with-answer": (record(answers=ANSWERED), VerifyEvidence(False, NONCE_USED),
                                Verdict.ORPHANED,
                                f"the facilitator reported the settlement successful in {TX}"),
    "verify-used": (record(), VerifyEvidence(False, NONCE_USED), Verdict.UNRESOLVED,
                    "facilitator reports the authorization used or canceled and no settle "
                    f"answer proves a transfer; {HINT}"),
    "never-executable": (record(), VerifyEvidence(False, "invalid_exact_evm_payload_signature"),
                         Verdict.VOID,
                         "authorization can never execute: invalid_exact_evm_payload_signature"),
    "verify-expired": (record(),
                       VerifyEvidence(False, EXPIRED),
                       Verdict.UNRESOLVED,
                       "authorization expired and the facilitator cannot tell whether it was "
                       f"used; {HINT}"),
    "verify-other": (record(), VerifyEvidence(False, "insufficient_funds"), Verdict.RETRY,
                     "facilitator: insufficient_funds"),
    "verify-no-reason": (record(), VerifyEvidence(False, None), Verdict.RETRY,
                         "facilitator: invalid"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_every_verdict_names_its_reason(case):
    rec, evidence, verdict, reason = CASES[case]
    d = decide(rec, evidence, NOW, RULES)
    assert (d.verdict, d.reason, d.attempts) == (verdict, reason, 1)


def test_exhausted_attempts_say_so_and_why():
    d = decide(record(attempts=4), VerifyEvidence(True, None), NOW, RULES)
    assert (d.verdict, d.attempts) == (Verdict.UNRESOLVED, 5)
    assert d.reason == "attempts exhausted (5): facilitator: authorization unused and still valid"


FULFILL = Rules(confirmations=1, max_attempts=5, policy="fulfill")


def test_fulfil_and_collect_say_what_happens_next():
    d = decide(record(attempts=2), chain(use=use(block=99)), NOW, FULFILL)
    assert (d.verdict, d.attempts) == (Verdict.FULFIL, 3)
    assert d.reason == "transfer found on chain; delivering the work"
    old = record(attempts=2, created_at=NOW.replace(hour=11))
    d = decide(old, chain(used=False), NOW, FULFILL)
    assert (d.verdict, d.attempts) == (Verdict.COLLECT, 3)
    assert d.reason == "authorization unused and still valid; settling, then delivering"


@pytest.mark.parametrize(
    "later",
    [
        {"source": "reconciler", "at": NOW.isoformat(), "response": {"success": False}},
        {"source": "settle", "at": NOW.isoformat(), "response": "not an answer"},
    ],
    ids=["our-own-note", "unreadable-answer"],
)
def test_a_success_answer_still_proves_behind_later_entries(later):
    d = decide(record(answers=[settled(), later]), VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None and d.receipt.transaction == TX


def test_waiting_for_a_late_answer_says_until_when():
    sent = NOW - timedelta(seconds=10)
    unanswered = {"source": "settle", "at": sent.isoformat(), "answered": False}
    rules = Rules(confirmations=2, max_attempts=5, late_answer_seconds=60)
    d = decide(record(answers=[unanswered]), VerifyEvidence(False, NONCE_USED), NOW, rules)
    until = sent + timedelta(seconds=60)
    assert (d.verdict, d.attempts, d.next_check_at) == (Verdict.RETRY, 1, until)
    assert d.reason == (
        f"facilitator reports the authorization used or canceled; waiting until "
        f"{until.isoformat()} for the settle answer the worker stopped waiting for"
    )
