"""The payment state machine's table: every edge on purpose, nothing else."""

import pytest

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.payments.lifecycle import (
    OWNERS,
    PUBLIC_NAMES,
    TRANSITIONS,
    Owner,
    allowed,
    public_name,
    refused,
)
from bindu.payments.records import FINAL_STATUSES, META_STATUS, OPEN_STATUSES, PaymentStatus
from bindu.payments.task_meta import with_payment_meta

S = PaymentStatus

# The whole table, written out again on purpose: a changed edge must change this test too.
EXPECTED_EDGES = {
    (S.CLAIMED, S.VERIFIED),
    (S.VERIFIED, S.SETTLING),
    (S.VERIFIED, S.FAILED),
    (S.SETTLING, S.SETTLED),
    (S.SETTLING, S.FAILED),
    (S.SETTLING, S.ORPHANED),
    (S.SETTLING, S.VOID),
    (S.SETTLING, S.UNRESOLVED),
    (S.SETTLING, S.FULFILLING),
    (S.SETTLED, S.COMPLETED),
    (S.SETTLED, S.ORPHANED),
    (S.SETTLED, S.FULFILLING),
    (S.FULFILLING, S.COMPLETED),
    (S.FULFILLING, S.ORPHANED),
    (S.FULFILLING, S.FAILED),
    (S.FAILED, S.ORPHANED),
    (S.FAILED, S.VOID),
    (S.FAILED, S.UNRESOLVED),
    (S.FAILED, S.FULFILLING),
    (S.UNRESOLVED, S.ORPHANED),
    (S.UNRESOLVED, S.VOID),
    (S.ORPHANED, S.REFUNDED),
}


def test_the_table_is_exactly_the_expected_edges() -> None:
    edges = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert edges == EXPECTED_EDGES
    assert set(TRANSITIONS) == set(PaymentStatus)


@pytest.mark.parametrize(("source", "target"), sorted(EXPECTED_EDGES))
def test_every_expected_edge_is_allowed(source: PaymentStatus, target: PaymentStatus) -> None:
    assert allowed(source, target)
    assert refused([source], target) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (a, b)
        for a in PaymentStatus
        for b in PaymentStatus
        if a != b and (a, b) not in EXPECTED_EDGES
    ],
)
def test_every_other_edge_is_refused(source: PaymentStatus, target: PaymentStatus) -> None:
    assert not allowed(source, target)
    assert refused([source], target) == [(source, target)]


@pytest.mark.parametrize(
    ("source", "target"),
    [
        # The bugs this table exists to stop:
        (S.VERIFIED, S.COMPLETED),  # completed without ever settling
        (S.VERIFIED, S.FULFILLING),  # a reconciler taking a queued payment (double settle)
        (S.VERIFIED, S.ORPHANED),
        (S.COMPLETED, S.ORPHANED),  # a delivered payment re-judged
        (S.SETTLED, S.FAILED),  # money moved: never "settle failed"
        (S.SETTLED, S.VOID),
        (S.SETTLED, S.SETTLING),  # a second /settle
        (S.FAILED, S.SETTLING),
        (S.FULFILLING, S.SETTLING),
        (S.VOID, S.ORPHANED),
        (S.REFUNDED, S.ORPHANED),
        (S.ORPHANED, S.COMPLETED),
        (S.CLAIMED, S.SETTLING),
        (S.CLAIMED, S.FAILED),
    ],
)
def test_dangerous_edges_are_refused(source: PaymentStatus, target: PaymentStatus) -> None:
    assert not allowed(source, target)


@pytest.mark.parametrize("status", sorted(PaymentStatus))
def test_bookkeeping_writes_only_on_unfinished_records(status: PaymentStatus) -> None:
    assert allowed(status, None) is (status not in FINAL_STATUSES)
    assert allowed(status, status) is (status not in FINAL_STATUSES)


def test_final_statuses_have_no_way_out_but_an_operators() -> None:
    for status in FINAL_STATUSES:
        exits = TRANSITIONS[status]
        if status is S.ORPHANED:
            assert exits == {S.REFUNDED}
        elif status is S.UNRESOLVED:
            assert exits == {S.ORPHANED, S.VOID}
        else:
            assert exits == set()


def test_a_compare_and_set_is_refused_if_any_expected_status_may_not_move() -> None:
    assert refused([S.FAILED, S.SETTLING], S.ORPHANED) == []
    assert refused([S.FAILED, S.VERIFIED], S.ORPHANED) == [(S.VERIFIED, S.ORPHANED)]
    assert refused([S.COMPLETED, S.VOID], None) == [(S.COMPLETED, None), (S.VOID, None)]


def test_each_status_has_exactly_one_owner() -> None:
    assert set(OWNERS) == set(PaymentStatus)
    owners = {getattr(Owner, n) for n in dir(Owner) if n.isupper()}
    for status, ownership in OWNERS.items():
        assert ownership.owner in owners, status
        assert (ownership.owner == Owner.NOBODY) is (not TRANSITIONS[status]), status


def test_public_names_hide_internal_steps() -> None:
    assert public_name(S.SETTLING) == "payment-verified"
    assert public_name(S.SETTLED) == "payment-completed"
    for status in PaymentStatus:
        if status not in (S.SETTLING, S.SETTLED):
            assert PUBLIC_NAMES[status] == status.value


def test_task_metadata_shows_the_public_name() -> None:
    task = Task(id="t", status=TaskStatus(state=TaskState.WORKING))
    assert with_payment_meta(task, S.SETTLED).metadata[META_STATUS] == "payment-completed"
    assert with_payment_meta(task, S.SETTLING).metadata[META_STATUS] == "payment-verified"
    assert with_payment_meta(task, S.ORPHANED).metadata[META_STATUS] == "payment-orphaned"


def test_the_reconciler_takes_only_statuses_handed_over_at_a_deadline() -> None:
    # A queued payment (the queue's, no deadline) and a claim are never its candidates.
    assert S.VERIFIED not in OPEN_STATUSES
    assert S.CLAIMED not in OPEN_STATUSES
    assert {S.SETTLING, S.SETTLED, S.FAILED, S.FULFILLING} == OPEN_STATUSES
    for status in OPEN_STATUSES:
        assert OWNERS[status].owner in (Owner.WORKER, Owner.RECONCILER), status
        assert status not in FINAL_STATUSES
