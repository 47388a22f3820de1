"""Every branch of the pure verdict function (DESIGN §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bindu.payments.records import PaymentRecord, PaymentStatus
from bindu.reconcile.evidence import (
    ChainEvidence,
    ChainUse,
    Corrupt,
    ProbeFailure,
    VerifyEvidence,
)
from bindu.reconcile.verdict import BACKOFF_SECONDS, Rules, Verdict, decide, next_check

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
T = int(NOW.timestamp())
TX = "0x" + "ab" * 32
RULES = Rules(confirmations=2, max_attempts=5)


def record(**changes) -> PaymentRecord:
    base = PaymentRecord(
        id="p1",
        task_id="t1",
        status=PaymentStatus.FAILED,
        network="eip155:31337",
        asset="0x" + "11" * 20,
        pay_to="0x" + "22" * 20,
        payer="0x" + "33" * 20,
        amount="10000",
        nonce="0x" + "44" * 32,
        valid_after=0,
        valid_before=T + 300,
        payload={},
        requirements={},
        created_at=NOW - timedelta(minutes=1),
        updated_at=NOW - timedelta(minutes=1),
    )
    return base.evolve(**changes)


def chain(used=True, use=None, latest_block=100, latest_time=T) -> ChainEvidence:
    return ChainEvidence(used=used, use=use, latest_block=latest_block, latest_time=latest_time)


def use(block=99, canceled=False, transfer_ok=True) -> ChainUse:
    return ChainUse(tx_hash=TX, block_number=block, canceled=canceled, transfer_ok=transfer_ok)


def test_chain_transfer_confirmed_is_orphaned_with_receipt():
    d = decide(record(), chain(use=use(block=99)), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None
    assert (d.receipt.transaction, d.receipt.block_number) == (TX, 99)
    assert (d.receipt.payer, d.receipt.amount) == ("0x" + "33" * 20, "10000")
    assert d.attempts == 1


def test_chain_not_enough_confirmations_waits():
    d = decide(record(), chain(use=use(block=100)), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert "1/2 confirmations" in d.reason
    assert d.next_check_at == NOW + timedelta(seconds=BACKOFF_SECONDS[0])


def test_zero_confirmations_setting_still_needs_the_block():
    d = decide(record(), chain(use=use(block=100)), NOW, Rules(confirmations=0))
    assert d.verdict is Verdict.ORPHANED


def test_chain_canceled_is_void():
    d = decide(record(), chain(use=use(canceled=True, transfer_ok=False)), NOW, RULES)
    assert d.verdict is Verdict.VOID
    assert "canceled" in d.reason


def test_chain_used_without_log_waits():
    d = decide(record(), chain(use=None), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert "log is not found" in d.reason


def test_chain_used_without_transfer_never_orphans():
    d = decide(record(), chain(use=use(transfer_ok=False)), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert "without the expected Transfer" in d.reason


def test_chain_unused_and_valid_waits():
    d = decide(record(), chain(used=False, latest_time=T), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert d.receipt is None


def test_chain_unused_past_valid_before_is_void():
    r = record(valid_before=T - 10)
    d = decide(r, chain(used=False, latest_time=T - 10), NOW, RULES)
    assert d.verdict is Verdict.VOID
    assert "expired unused" in d.reason


def test_wall_clock_past_expiry_is_not_proof_chain_time_is():
    # Chain time lags behind: not yet provable, even though our clock says expired.
    r = record(valid_before=T - 10)
    d = decide(r, chain(used=False, latest_time=T - 11), NOW, RULES)
    assert d.verdict is Verdict.RETRY


NONCE_USED = "invalid_exact_evm_nonce_already_used"


def settled(tx=TX, source="settle", success=True, **response) -> dict:
    """A stored /settle answer: the facilitator's answer under its own key."""
    body = {"success": success, "transaction": tx, "network": "eip155:31337", **response}
    return {"source": source, "at": NOW.isoformat(), "response": body}


def test_verify_consumed_with_a_pending_hash_is_unresolved_never_orphaned():
    # A known hash is not proof: the payer may have canceled (even front-run the settle).
    r = record(settle_tx=TX)
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED
    assert d.receipt is None and d.next_check_at is None
    assert "used or canceled" in d.reason
    assert "X402__RPC_URLS for eip155:31337" in d.reason and "reconcile --once" in d.reason


def test_verify_consumed_without_any_answer_is_unresolved_on_the_first_probe():
    d = decide(record(), VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED
    assert d.attempts == 1
    assert d.receipt is None


@pytest.mark.parametrize("late", [False, True])
def test_a_success_answer_with_a_hash_proves_the_orphan(late):
    r = record(answers=[{**settled(), "late": late}])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None
    assert (d.receipt.transaction, d.receipt.block_number) == (TX, None)
    assert (d.receipt.payer, d.receipt.amount) == ("0x" + "33" * 20, "10000")
    assert TX in d.reason


def test_the_proving_hash_is_the_answers_not_a_pending_one():
    other = "0x" + "cd" * 32
    r = record(settle_tx=other, answers=[settled()])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.receipt is not None and d.receipt.transaction == TX


def test_the_answer_hash_is_kept_lower_case():
    r = record(answers=[settled(tx="0x" + "AB" * 32)])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.receipt is not None and d.receipt.transaction == TX


@pytest.mark.parametrize(
    "answer",
    [
        settled(success=False, errorReason="settlement_pending"),  # broadcast, not proven
        settled(tx=""),  # success without a hash
        settled(tx="0x1234"),  # not a transaction hash
        settled(tx=None),
        settled(success="true"),  # only a JSON true is a success
        settled(source="reconciler"),  # our own words are no facilitator answer
        settled(source="cancel"),
        {"source": "settle", "success": True, "transaction": TX},  # not under "response"
        {"source": "settle", "response": "success"},
        {"source": "fulfil", "phase": "settle", "response": settled()["response"]},
    ],
    ids=[
        "pending",
        "no-hash",
        "short-hash",
        "null-hash",
        "string-success",
        "reconciler",
        "cancel",
        "flat",
        "not-a-dict",
        "fulfil",
    ],
)
def test_answers_that_prove_nothing(answer):
    d = decide(record(answers=[answer]), VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED


def test_any_success_answer_among_several_is_proof():
    answers = [settled(), settled(success=False, tx="", errorReason="timeout")]
    d = decide(record(answers=answers), VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED


def test_a_success_answer_proves_even_past_valid_before():
    # The facilitator can no longer say whether it was used, but its own answer did.
    reason = "invalid_exact_evm_payload_authorization_valid_before"
    d = decide(record(answers=[settled()]), VerifyEvidence(False, reason), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED


def test_a_success_answer_contradicted_by_verify_waits():
    d = decide(record(answers=[settled()]), VerifyEvidence(True, None), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert "says unused" in d.reason
    assert d.next_check_at == NOW + timedelta(seconds=BACKOFF_SECONDS[0])


@pytest.mark.parametrize("source", ["facilitator", "none"])
def test_a_success_answer_needs_no_probe_without_a_chain(source):
    d = decide(record(answers=[settled()]), ProbeFailure(source, "down"), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None and d.receipt.transaction == TX


def test_where_a_chain_is_configured_it_must_confirm_the_answer():
    d = decide(record(answers=[settled()]), ProbeFailure("chain", "down"), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    # The chain wins over the answer: here it shows the payer's cancellation.
    canceled = chain(use=use(canceled=True, transfer_ok=False))
    d = decide(record(answers=[settled()]), canceled, NOW, RULES)
    assert d.verdict is Verdict.VOID
    d = decide(record(answers=[settled()]), chain(used=False), NOW, RULES)
    assert d.verdict is Verdict.RETRY


def test_a_success_answer_under_fulfill_delivers():
    d = decide(record(answers=[settled()]), VerifyEvidence(False, NONCE_USED), NOW, FULFILL)
    assert d.verdict is Verdict.FULFIL
    assert d.receipt is not None and d.receipt.transaction == TX


def test_verify_valid_waits():
    d = decide(record(), VerifyEvidence(True, None), NOW, RULES)
    assert d.verdict is Verdict.RETRY


@pytest.mark.parametrize(
    "reason",
    [
        "invalid_exact_evm_payload_signature",
        "invalid_exact_evm_payload_recipient_mismatch",
        "invalid_exact_evm_payload_authorization_value_mismatch",
    ],
)
def test_verify_never_executable_is_void(reason):
    d = decide(record(), VerifyEvidence(False, reason), NOW, RULES)
    assert d.verdict is Verdict.VOID


def test_verify_expired_cannot_prove_anything():
    reason = "invalid_exact_evm_payload_authorization_valid_before"
    d = decide(record(), VerifyEvidence(False, reason), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED
    assert "X402__RPC_URLS for eip155:31337" in d.reason


def test_verify_other_reason_waits():
    reason = "invalid_exact_evm_insufficient_balance"
    d = decide(record(), VerifyEvidence(False, reason), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert reason in d.reason


def test_probe_exception_waits_and_counts_an_attempt():
    d = decide(record(attempts=2), ProbeFailure("facilitator", "ConnectError"), NOW, RULES)
    assert d.verdict is Verdict.RETRY
    assert d.attempts == 3
    assert "facilitator unavailable" in d.reason


def test_corrupt_record_is_unresolved():
    d = decide(record(), Corrupt("payload is not JSON"), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED
    assert "corrupt" in d.reason


def test_attempts_exhausted_is_unresolved():
    d = decide(record(attempts=4), VerifyEvidence(True, None), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED
    assert d.attempts == 5
    assert "attempts exhausted" in d.reason


def test_proof_beats_the_attempt_cap():
    d = decide(record(attempts=4), chain(use=use(block=90)), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED


def test_backoff_grows_then_repeats():
    r = record(valid_before=T + 10**6)
    delays = [
        (next_check(r, n, NOW, RULES) - NOW).total_seconds()
        for n in range(1, len(BACKOFF_SECONDS) + 3)
    ]
    assert delays[: len(BACKOFF_SECONDS)] == list(BACKOFF_SECONDS)
    assert delays[-1] == delays[-2] == BACKOFF_SECONDS[-1]


def test_next_check_lands_just_after_expiry():
    r = record(valid_before=T + 30)
    at = next_check(r, 3, NOW, RULES)  # backoff would say 60 s
    assert at == NOW + timedelta(seconds=30 + RULES.expiry_margin_seconds)


def test_never_resolving_payment_is_bounded_by_max_attempts():
    r = record(valid_before=T + 10**7)
    probes = 0
    now = NOW
    while True:
        probes += 1
        d = decide(r, VerifyEvidence(True, None), now, RULES)
        if d.verdict is not Verdict.RETRY:
            break
        r = r.evolve(attempts=d.attempts)
        assert d.next_check_at is not None
        now = d.next_check_at
    assert probes == RULES.max_attempts
    assert d.verdict is Verdict.UNRESOLVED


FULFILL = Rules(confirmations=1, max_attempts=5, policy="fulfill", collect_after_seconds=60)


def test_fulfill_policy_delivers_a_proven_orphan():
    d = decide(record(), chain(use=use(block=99)), NOW, FULFILL)
    assert d.verdict is Verdict.FULFIL
    assert d.receipt is not None and d.receipt.transaction == TX


def test_fulfill_never_twice_after_the_agent_started():
    started = record(answers=[{"source": "fulfil", "phase": "agent"}])
    d = decide(started, chain(use=use(block=99)), NOW, FULFILL)
    assert d.verdict is Verdict.ORPHANED


def test_fulfill_collects_an_old_unused_valid_authorization():
    old = record(created_at=NOW - timedelta(minutes=5))
    d = decide(old, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.COLLECT
    d = decide(old, VerifyEvidence(True, None), NOW, FULFILL)
    assert d.verdict is Verdict.COLLECT


@pytest.mark.parametrize(
    "changes",
    [
        {"created_at": NOW - timedelta(seconds=10)},  # a lost broadcast may still land
        {"settle_tx": TX},  # a known hash may still land: never broadcast twice
        {"answers": [{"source": "cancel"}]},  # the client no longer wants the work
        {"valid_before": T + 20},  # too little time left to settle safely
        # A /settle in doubt may still land: never a second one (issue 9, must hold 4).
        {"status": PaymentStatus.SETTLING},  # its worker died mid-settle
        {"answers": [{"source": "settle", "answered": False}]},  # timed out, no answer
        {"answers": [{"source": "fulfil", "phase": "settle", "answered": False}]},
        {"answers": [{"source": "reconciler", "from": "payment-settling"}]},  # taken over
    ],
)
def test_fulfill_does_not_collect_when_unsafe(changes):
    r = record(created_at=NOW - timedelta(minutes=5)).evolve(**changes)
    d = decide(r, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_fulfill_does_not_collect_on_probe_failure():
    old = record(created_at=NOW - timedelta(minutes=5))
    d = decide(old, ProbeFailure("chain", "down"), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_record_policy_never_collects():
    old = record(created_at=NOW - timedelta(minutes=5))
    d = decide(old, chain(used=False, latest_time=T), NOW, RULES)
    assert d.verdict is Verdict.RETRY


# Boundaries: each comparison in verdict.py is pinned on both sides.


def test_confirmations_exactly_enough_is_orphaned():
    # latest 100, mined in 99: two confirmations, the rule asks for two.
    assert decide(record(), chain(use=use(block=99)), NOW, RULES).verdict is Verdict.ORPHANED
    three = Rules(confirmations=3, max_attempts=5)
    d = decide(record(), chain(use=use(block=99)), NOW, three)
    assert d.verdict is Verdict.RETRY and "2/3 confirmations" in d.reason


def test_zero_confirmations_still_need_the_block_on_the_node_we_ask():
    # A node behind the one that reported the log: the block is not there yet.
    d = decide(record(), chain(use=use(block=101), latest_block=100), NOW, Rules(confirmations=0))
    assert d.verdict is Verdict.RETRY
    assert "0/0 confirmations" in d.reason


def test_expiry_boundary_is_chain_time_equal_to_valid_before():
    r = record(valid_before=T)
    assert decide(r, chain(used=False, latest_time=T), NOW, RULES).verdict is Verdict.VOID
    assert decide(r, chain(used=False, latest_time=T - 1), NOW, RULES).verdict is Verdict.RETRY


def test_attempt_cap_boundary():
    one_left = record(attempts=3)  # the 4th attempt of 5
    d = decide(one_left, VerifyEvidence(True, None), NOW, RULES)
    assert d.verdict is Verdict.RETRY and d.attempts == 4


def test_next_check_is_never_in_the_past():
    # Already past validBefore + margin: the plain backoff, from now.
    expired = record(valid_before=T - 100)
    for attempts in range(1, len(BACKOFF_SECONDS) + 2):
        at = next_check(expired, attempts, NOW, RULES)
        assert at > NOW
        assert at == NOW + timedelta(seconds=BACKOFF_SECONDS[min(attempts, 6) - 1])


def test_next_check_at_the_expiry_moment_itself_takes_the_backoff():
    # validBefore + margin == now: checking "at expiry" would be checking now, again.
    r = record(valid_before=T - int(RULES.expiry_margin_seconds))
    assert next_check(r, 1, NOW, RULES) == NOW + timedelta(seconds=BACKOFF_SECONDS[0])


def test_next_check_expiry_later_than_the_backoff_keeps_the_backoff():
    r = record(valid_before=T + 10)  # expiry check at +12 s, backoff 5 s
    assert next_check(r, 1, NOW, RULES) == NOW + timedelta(seconds=5)


def test_retry_decisions_carry_a_future_next_check():
    for evidence in (VerifyEvidence(True, None), ProbeFailure("chain", "x"), chain(used=False)):
        d = decide(record(valid_before=T - 100), evidence, NOW, RULES)
        if d.verdict is Verdict.RETRY:
            assert d.next_check_at is not None and d.next_check_at > NOW


def test_collect_age_boundary():
    exactly = record(created_at=NOW - timedelta(seconds=60))
    d = decide(exactly, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.COLLECT
    younger = record(created_at=NOW - timedelta(seconds=59))
    assert decide(younger, chain(used=False, latest_time=T), NOW, FULFILL).verdict is Verdict.RETRY


def test_collect_margin_boundary():
    old = NOW - timedelta(minutes=5)
    margin = int(FULFILL.collect_margin_seconds)
    just_enough = record(created_at=old, valid_before=T + margin + 1)
    d = decide(just_enough, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.COLLECT
    too_close = record(created_at=old, valid_before=T + margin)
    d = decide(too_close, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_collect_uses_chain_time_not_wall_time():
    old = NOW - timedelta(minutes=5)
    r = record(created_at=old, valid_before=T + 100)
    # The chain's clock is already near validBefore although ours is not.
    d = decide(r, chain(used=False, latest_time=T + 80), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_collect_needs_an_unused_authorization():
    old = record(created_at=NOW - timedelta(minutes=5))
    d = decide(old, VerifyEvidence(False, "invalid_exact_evm_insufficient_balance"), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_fulfill_after_the_agent_started_never_collects():
    started = record(
        created_at=NOW - timedelta(minutes=5), answers=[{"source": "fulfil", "phase": "agent"}]
    )
    d = decide(started, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.RETRY


def test_agent_started_needs_both_markers():
    for answers in ([{"source": "fulfil", "phase": "claim"}], [{"source": "x", "phase": "agent"}]):
        d = decide(record(answers=answers), chain(use=use(block=99)), NOW, FULFILL)
        assert d.verdict is Verdict.FULFIL


# The late answer: facilitator-only, a consumed nonce waits for the answer still on its way

LATE = Rules(confirmations=1, max_attempts=5, late_answer_seconds=60)


def unanswered(at=NOW - timedelta(seconds=10), answered=False) -> dict:
    return {"source": "settle", "at": at.isoformat(), "answered": answered, "response": {}}


def test_consumed_waits_for_a_late_answer_until_the_window_ends():
    r = record(answers=[unanswered()])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.RETRY
    assert d.next_check_at == NOW + timedelta(seconds=50)
    assert d.attempts == 1 and "waiting until" in d.reason


def test_once_the_window_has_passed_consumed_is_unresolved():
    r = record(answers=[unanswered(at=NOW - timedelta(seconds=60))])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.UNRESOLVED
    r = record(answers=[unanswered(at=NOW - timedelta(seconds=59))])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.RETRY and d.next_check_at == NOW + timedelta(seconds=1)


def test_the_late_answer_arrived_and_proves_it():
    late = {**settled(), "late": True, "answered": True}
    r = record(answers=[unanswered(), late])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.ORPHANED and d.receipt is not None


@pytest.mark.parametrize(
    "answers",
    [
        [unanswered(answered=True)],  # the worker got its answer: nothing more to come
        [{"source": "settle", "at": NOW.isoformat()}],  # no word on whether it answered
        [unanswered(), {**unanswered(), "answered": True, "late": True}],  # it came: a failure
        [{**unanswered(), "at": "yesterday"}],
        [{**unanswered(), "at": "2026-11-27T11:59:50"}],  # no zone: not a time we wrote
        [{**unanswered(), "source": "reconciler"}],
        [],
    ],
    ids=["answered", "unknown", "late-failure", "bad-time", "naive-time", "not-settle", "none"],
)
def test_no_late_answer_to_wait_for_is_unresolved_at_once(answers):
    d = decide(record(answers=answers), VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.UNRESOLVED


def test_only_a_consumed_nonce_waits_for_the_late_answer():
    r = record(answers=[unanswered()])
    assert decide(r, VerifyEvidence(True, None), NOW, LATE).next_check_at == NOW + timedelta(
        seconds=BACKOFF_SECONDS[0]
    )
    expired = "invalid_exact_evm_payload_authorization_valid_before"
    assert decide(r, VerifyEvidence(False, expired), NOW, LATE).verdict is Verdict.UNRESOLVED
    canceled = chain(use=use(canceled=True, transfer_ok=False))
    assert decide(r, canceled, NOW, LATE).verdict is Verdict.VOID


def test_without_a_late_window_nothing_waits():
    r = record(answers=[unanswered()])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, RULES)
    assert d.verdict is Verdict.UNRESOLVED


def test_a_proof_already_here_never_waits():
    # Even when a later settle attempt went unanswered, the earlier success proves it.
    r = record(answers=[settled(), unanswered()])
    d = decide(r, VerifyEvidence(False, NONCE_USED), NOW, LATE)
    assert d.verdict is Verdict.ORPHANED


def test_fulfill_collects_after_a_settle_refused_with_an_answer():
    # The facilitator answered (HTTP 500 before broadcasting): nothing is in flight.
    refused = record(
        created_at=NOW - timedelta(minutes=5),
        answers=[{"source": "settle", "answered": True, "response": {"error": "boom"}}],
    )
    d = decide(refused, chain(used=False, latest_time=T), NOW, FULFILL)
    assert d.verdict is Verdict.COLLECT
