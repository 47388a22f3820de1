"""The payment lifecycle as one explicit state machine (DESIGN §7: every state has an owner).

Pure data and functions, no I/O. Storage enforces ``allowed`` on every write
(``CheckedStorage.transition_payment``), so no caller can move a payment along an edge
this table does not have, whatever the backend.

Who owns each status, and until when (after that deadline the next owner takes it):

============================  ==========================  ===================================
status                        owner                       deadline, then
============================  ==========================  ===================================
claimed                       the request (paywall)       verify timeout + margin: swept
                                                          (deleted; no settle was ever sent)
payment-verified              the task queue (a worker)   none: the queue survives restarts
payment-settling              the worker that sent        settle timeout + late-answer window
                              /settle                     + margin: the reconciler judges it
                                                          like a failed settle
payment-settled               the worker running the      agent budget + margin: the
                              agent                       reconciler (record → orphaned,
                                                          fulfill → re-run only when the agent
                                                          is idempotent, else orphaned)
payment-fulfilling            the reconciler delivering   fulfil timeout: the reconciler
                                                          (abandoned, judged again)
payment-failed                the reconciler              its backoff, ending in a verdict
payment-unresolved            an operator                 ``bindu reconcile --once`` with RPC
                                                          may re-judge it orphaned or void
payment-orphaned              an operator                 refund recorded → payment-refunded
payment-completed, -void,     nobody (final)              —
-refunded
============================  ==========================  ===================================

A2A clients see public names only: ``payment-settling`` shows as ``payment-verified`` (the
settle is not answered yet) and ``payment-settled`` as ``payment-completed`` (paid; the
work is running). A settled payment whose work is never delivered always moves on to a
verdict (``payment-orphaned``), so the public contract stays truthful.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from bindu.payments.records import FINAL_STATUSES, PaymentStatus

S = PaymentStatus


class Owner:
    """Who resolves a status (one per status)."""

    REQUEST = "request"  # the HTTP request that claimed the nonce
    QUEUE = "queue"  # the durable task queue: a worker takes the task
    WORKER = "worker"  # the worker that took the task (settle, agent)
    RECONCILER = "reconciler"
    OPERATOR = "operator"
    NOBODY = "nobody"  # final


@dataclass(frozen=True)
class Ownership:
    owner: str
    deadline: str  # what bounds the owner's hold, in words (the settings that set it)
    then: str  # who takes over, or what happens, after the deadline


OWNERS: dict[PaymentStatus, Ownership] = {
    S.CLAIMED: Ownership(
        Owner.REQUEST, "X402__VERIFY_TIMEOUT_SECONDS + margin", "swept: the claim is deleted"
    ),
    S.VERIFIED: Ownership(Owner.QUEUE, "none (durable queue)", "a worker takes the task"),
    S.SETTLING: Ownership(
        Owner.WORKER,
        "X402__SETTLE_TIMEOUT_SECONDS + X402__LATE_ANSWER_SECONDS + margin",
        "the reconciler judges it like a failed settle",
    ),
    S.SETTLED: Ownership(
        Owner.WORKER,
        "SERVER__AGENT_TIMEOUT_SECONDS + margin",
        "the reconciler: orphaned (work not delivered), or re-run if the agent is idempotent",
    ),
    S.FULFILLING: Ownership(
        Owner.RECONCILER,
        "X402__RECONCILIATION__FULFIL_TIMEOUT_SECONDS",
        "another reconciler pass: abandoned and judged again, never re-run",
    ),
    S.FAILED: Ownership(Owner.RECONCILER, "backoff and attempt cap", "a verdict"),
    S.UNRESOLVED: Ownership(Owner.OPERATOR, "none", "re-judged with RPC by reconcile --once"),
    S.ORPHANED: Ownership(Owner.OPERATOR, "none", "refunded by an operator"),
    S.COMPLETED: Ownership(Owner.NOBODY, "final", "—"),
    S.VOID: Ownership(Owner.NOBODY, "final", "—"),
    S.REFUNDED: Ownership(Owner.NOBODY, "final", "—"),
}

# Every edge a payment may take. A status not listed as a source has no way out.
TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    # /verify passed and the task is queued (one transaction); a refused claim is deleted.
    S.CLAIMED: frozenset({S.VERIFIED}),
    # A worker starts settling; the client cancels a queued task (never settled) or the
    # server cannot settle at all: failed, for the reconciler to prove void.
    S.VERIFIED: frozenset({S.SETTLING, S.FAILED}),
    # The worker's settle answered: success with a hash, or failed/unknown. A due one (the
    # worker died mid-settle) is the reconciler's, judged like a failed settle.
    S.SETTLING: frozenset({S.SETTLED, S.FAILED, S.ORPHANED, S.VOID, S.UNRESOLVED, S.FULFILLING}),
    # Work delivered; or never delivered (agent failed, process died, shutdown): orphaned;
    # or re-delivered by the reconciler when the agent is declared idempotent.
    S.SETTLED: frozenset({S.COMPLETED, S.ORPHANED, S.FULFILLING}),
    # Delivered; the agent failed (orphaned); the late settle failed or the fulfilment was
    # abandoned (failed, judged again, the agent never re-run).
    S.FULFILLING: frozenset({S.COMPLETED, S.ORPHANED, S.FAILED}),
    S.FAILED: frozenset({S.ORPHANED, S.VOID, S.UNRESOLVED, S.FULFILLING}),
    # Re-judged once chain proof is available.
    S.UNRESOLVED: frozenset({S.ORPHANED, S.VOID}),
    S.ORPHANED: frozenset({S.REFUNDED}),
    S.COMPLETED: frozenset(),
    S.VOID: frozenset(),
    S.REFUNDED: frozenset(),
}

# What task metadata shows for each status (internal steps hidden behind public names).
PUBLIC_NAMES: dict[PaymentStatus, str] = {s: s.value for s in PaymentStatus} | {
    S.SETTLING: S.VERIFIED.value,
    S.SETTLED: S.COMPLETED.value,
}


def public_name(status: PaymentStatus) -> str:
    """The ``x402.payment.status`` an A2A client sees for ``status``."""
    return PUBLIC_NAMES[status]


def allowed(source: PaymentStatus, target: PaymentStatus | None) -> bool:
    """Whether a record in ``source`` may be written with new status ``target``.

    ``target`` None (or equal to ``source``) is a bookkeeping write (attempts, answers,
    next check, lease): allowed while the status is not final, since a final status is
    the end of the record's story (an operator's refund is its own edge).
    """
    if target is None or target is source:
        return source not in FINAL_STATUSES
    return target in TRANSITIONS[source]


def refused(
    expected: Collection[PaymentStatus], target: PaymentStatus | None
) -> list[tuple[PaymentStatus, PaymentStatus | None]]:
    """The (from, to) pairs of a compare-and-set that the table forbids (sorted)."""
    bad = [(s, target) for s in expected if not allowed(s, target)]
    return sorted(bad, key=lambda pair: pair[0].value)
