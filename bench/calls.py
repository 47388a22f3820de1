"""Figure 2: facilitator calls spent on one payment that never resolves, over 24 hours.

Simulated time: the real Reconciler runs a pass every ``interval`` seconds of a simulated
clock (``run_pass(now=...)``) over MemoryStorage, against a facilitator whose ``/verify``
always answers "valid" (unused and still valid: no proof either way). The record's
``validBefore`` lies beyond the day, so only the attempt cap can end it. Beside it, the
first attempt's loop (every 30 s: newest 100 tasks, ``/settle`` again each one still
payment-failed) against a facilitator whose settle never succeeds, on the same clock.

A second line uses the chain probe with a realistic validity (300 s): "unused" until chain
time passes validBefore, when the record becomes payment-void.

``python -m bench.calls [--json PATH]``
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta
from typing import Any

from x402.schemas import VerifyResponse

from bench.common import FigureResult, quiet, run_figure, signed_payment
from bindu.a2a import Message, Task, TaskState, TaskStatus, TextPart, new_id, utcnow
from bindu.payments.records import META_STATUS, PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.reconcile.evidence import ChainEvidence, Evidence
from bindu.reconcile.service import Reconciler
from bindu.settings import ReconciliationSettings, X402Settings
from bindu.storage.memory import MemoryStorage

DAY = 86_400
SEED_INTERVAL = 30  # the first attempt's loop
SEED_NEWEST = 100


class AlwaysValid:
    """Stands in for HTTPFacilitatorClient: /verify says valid, /settle never succeeds."""

    def __init__(self) -> None:
        self.verify_calls: list[datetime] = []
        self.settle_calls = 0
        self.clock: datetime | None = None

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        assert self.clock is not None
        self.verify_calls.append(self.clock)
        return VerifyResponse(is_valid=True)

    async def settle(self, payload: Any, requirements: Any) -> Any:
        self.settle_calls += 1
        raise ValueError("Facilitator settle failed (502): bad gateway")

    async def aclose(self) -> None:
        return None


class ChainUnused(Reconciler):
    """The chain probe's answer for an authorization that never lands: unused, and chain
    time is the simulated clock."""

    clock: datetime
    calls: list[datetime]

    async def _probe(self, record: PaymentRecord) -> Evidence:
        self.calls.append(self.clock)
        return ChainEvidence(
            used=False, use=None, latest_block=1, latest_time=int(self.clock.timestamp())
        )


async def _failed_payment(
    storage: MemoryStorage, start: datetime, valid_seconds: int, payload: dict[str, Any]
) -> PaymentRecord:
    auth = payload["payload"]["authorization"]
    valid_before = int(start.timestamp()) + valid_seconds
    payload = {**payload, "payload": {**payload["payload"]}}
    payload["payload"]["authorization"] = {**auth, "validBefore": str(valid_before)}
    task = Task(
        status=TaskStatus(state=TaskState.FAILED),
        history=[Message(role="user", parts=[TextPart(text="paid work")])],
        metadata={META_STATUS: PaymentStatus.FAILED.value},
    )
    record = PaymentRecord(
        id=new_id(),
        task_id=task.id,
        status=PaymentStatus.CLAIMED,
        network=payload["accepted"]["network"],
        asset=payload["accepted"]["asset"].lower(),
        pay_to=payload["accepted"]["payTo"].lower(),
        payer=auth["from"].lower(),
        amount=auth["value"],
        nonce=auth["nonce"].lower(),
        valid_after=0,
        valid_before=valid_before,
        payload=payload,
        requirements=payload["accepted"],
        created_at=start,
        updated_at=start,
    )
    assert await storage.claim_payment(record)
    stored = await storage.transition_payment(
        record.id,
        {PaymentStatus.CLAIMED},
        PaymentUpdate(status=PaymentStatus.FAILED, error="settle_timeout", next_check_at=start),
        now=start,
        task=task,
    )
    assert stored is not None
    return stored


async def ours(
    interval: float, payload: dict[str, Any], *, chain: bool, valid_seconds: int
) -> dict[str, Any]:
    storage = MemoryStorage()
    await storage.open()
    start = utcnow().replace(microsecond=0)
    record = await _failed_payment(storage, start, valid_seconds, payload)
    settings = X402Settings(
        reconciliation=ReconciliationSettings(interval_seconds=interval), rpc_urls={}
    )
    facilitator = AlwaysValid()
    reconciler: Reconciler
    if chain:
        reconciler = ChainUnused(storage, settings, facilitator=None, owner="bench")
        reconciler.calls = []
    else:
        reconciler = Reconciler(storage, settings, facilitator=facilitator, owner="bench")  # type: ignore[arg-type]
    passes = 0
    verdict_at: datetime | None = None
    final = record
    try:
        now = start
        while now <= start + timedelta(seconds=DAY):
            facilitator.clock = now
            if isinstance(reconciler, ChainUnused):
                reconciler.clock = now
            await reconciler.run_pass(now=now)
            passes += 1
            if verdict_at is None:
                current = await storage.get_payment(record.id)
                assert current is not None
                if current.status not in (PaymentStatus.FAILED, PaymentStatus.VERIFIED):
                    verdict_at = now
                    final = current
            now += timedelta(seconds=interval)
    finally:
        await reconciler.close()
    calls = reconciler.calls if isinstance(reconciler, ChainUnused) else facilitator.verify_calls
    return {
        "calls": len(calls),
        "settle_calls": facilitator.settle_calls,
        "passes": passes,
        "final_status": final.status.value if verdict_at else "open",
        "verdict_after_s": (verdict_at - start).total_seconds() if verdict_at else None,
        "call_offsets_s": [(c - start).total_seconds() for c in calls],
    }


async def first_attempt(payload: dict[str, Any]) -> dict[str, Any]:
    """The seed's loop, faithfully: every 30 s list the newest 100 tasks, re-send /settle for
    each one still payment-failed; mark orphaned only when settle succeeds (it never does)."""
    storage = MemoryStorage()
    await storage.open()
    start = utcnow().replace(microsecond=0)
    await _failed_payment(storage, start, 10 * DAY, payload)
    facilitator = AlwaysValid()
    passes = 0
    now = start
    while now < start + timedelta(seconds=DAY):
        # MemoryStorage lists oldest first; take the newest SEED_NEWEST as the seed did.
        tasks = await storage.list_tasks(limit=10_000)
        for task in tasks[-SEED_NEWEST:][::-1]:
            if task.metadata.get(META_STATUS) != PaymentStatus.FAILED.value:
                continue
            with contextlib.suppress(ValueError):  # the seed logged it; next tick retries
                await facilitator.settle(None, None)
        passes += 1
        now += timedelta(seconds=SEED_INTERVAL)
    await storage.close()
    return {"calls": facilitator.settle_calls, "passes": passes}


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    result = FigureResult("2", "facilitator calls per never-resolving payment, 24 h simulated")
    started = time.perf_counter()
    payload, _ = await signed_payment()
    max_attempts = ReconciliationSettings().max_attempts
    interval = ReconciliationSettings().interval_seconds
    mine = await ours(interval, payload, chain=False, valid_seconds=10 * DAY)
    seed = await first_attempt(payload)
    chain = await ours(interval, payload, chain=True, valid_seconds=300)
    result.add(
        "ours: /verify calls in 24 h (facilitator only)",
        mine["calls"],
        target=f"<= MAX_ATTEMPTS ({max_attempts})",
        ok=mine["calls"] <= max_attempts,
    )
    result.add(
        "ours: verdict",
        f"{mine['final_status']} after {mine['verdict_after_s'] / 3600:.2f} h simulated",
    )
    result.add(
        "ours: /settle calls", mine["settle_calls"], target="0", ok=mine["settle_calls"] == 0
    )
    result.add("first attempt: /settle calls in 24 h", seed["calls"], note="one per 30 s")
    result.add(
        "calls ratio first attempt / ours", round(seed["calls"] / max(1, mine["calls"]), 1), "x"
    )
    result.add(
        "ours, chain probe, validBefore +300 s: probes",
        chain["calls"],
        note=f"{chain['final_status']} after {chain['verdict_after_s']:.0f} s",
    )
    result.details = {
        "interval_seconds": interval,
        "max_attempts": max_attempts,
        "ours_facilitator_only": mine,
        "ours_chain_300s": chain,
        "first_attempt": seed,
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
