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


def test_verify_consumed_is_orphaned_with_known_hash():
    r = record(settle_tx=TX)
    d = decide(r, VerifyEvidence(False, "invalid_exact_evm_nonce_already_used"), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None and d.receipt.transaction == TX


def test_verify_consumed_without_hash_is_still_orphaned():
    d = decide(record(), VerifyEvidence(False, "invalid_exact_evm_nonce_already_used"), NOW, RULES)
    assert d.verdict is Verdict.ORPHANED
    assert d.receipt is not None and d.receipt.transaction == ""


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
    assert "X402__RPC_URLS" in d.reason


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
