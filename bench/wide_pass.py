"""Figure 4: one reconciliation pass over 10,000 due payments, facilitator answering in 20 ms.

The real Reconciler in facilitator-only mode (no RPC URL), its real HTTPFacilitatorClient
talking over loopback to bench.fakefac in its own process, whose ``/verify`` sleeps 20 ms
and answers ``{"isValid": true}`` (so every payment stays open: a retry write each).
10,000 payment-failed records with real-looking signed payloads (bench/history.py,
``all_due``) in SQLite; batch size 10,000 so one pass can take them all, concurrency 32.

Bound: N x latency / concurrency = 10,000 x 20 ms / 32 = 6.25 s; target within 1.3x.
Memory: peak RSS during the pass over RSS before it (VmHWM reset through
/proc/self/clear_refs on Linux), and tracemalloc's peak while claiming the whole backlog
(the records a pass holds). As many timed passes as fit in PASS_BUDGET_S (at least one, at
most five): as shipped one pass takes over a minute here (see docs/benchmarks.md), so five
would not fit the 10-minute budget of ``make bench``.

Beside it, what one /verify costs by HTTP client at the same concurrency against the same
fake facilitator: where the time of the pass goes.

``python -m bench.wide_pass [--quick] [--json PATH]``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiosqlite
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements

from bench.common import (
    FigureResult,
    fake_facilitator,
    http_load,
    median,
    peak_rss_mib,
    quiet,
    reset_peak_rss,
    run_figure,
    signed_payment,
    stamp,
    vm_status,
)
from bench.history import sqlite_history
from bindu.a2a import utcnow
from bindu.payments.facilitator import make_facilitator_client
from bindu.reconcile import service
from bindu.reconcile.service import Reconciler
from bindu.reconcile.verdict import Verdict
from bindu.settings import ReconciliationSettings, X402Settings
from bindu.storage.sqlite import SqliteStorage

N = 10_000
LATENCY_MS = 20.0
CONCURRENCY = 32
TARGET = 1.3
MAX_RUNS = 5
# Time the timed passes may take in all: a pass as shipped takes over a minute here, so
# ``make bench`` gets one; a faster pass gets up to MAX_RUNS.
PASS_BUDGET_S = 100.0


async def _reset(db: aiosqlite.Connection, due_at: str) -> None:
    await db.execute("BEGIN IMMEDIATE")
    await db.execute(
        "UPDATE payments SET status = 'payment-failed', attempts = 0, next_check_at = ?,"
        " lease_owner = NULL, lease_expires_at = NULL, answers = '[]'",
        (due_at,),
    )
    await db.execute("COMMIT")
    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _client_costs(
    url: str, payload: dict[str, Any], requirements: dict[str, Any]
) -> dict[str, float]:
    """Wall time per /verify at CONCURRENCY in flight against the same fake facilitator,
    by HTTP client: the SDK's HTTPFacilitatorClient (httpx) as shipped, the same with the
    failed ``import sniffio`` short-circuited, aiohttp, and raw asyncio streams."""
    per = 15
    count = per * CONCURRENCY
    model_payload = PaymentPayload.model_validate(payload)
    model_requirements = PaymentRequirements.model_validate(requirements)
    body = json.dumps(
        {"x402Version": 2, "paymentPayload": payload, "paymentRequirements": requirements}
    ).encode()
    out: dict[str, float] = {}

    async def sdk() -> None:
        client = HTTPFacilitatorClient(FacilitatorConfig(url=url, timeout=30))
        try:

            async def worker() -> None:
                for _ in range(per):
                    answer = await client.verify(model_payload, model_requirements)
                    assert answer.is_valid

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        finally:
            await client.aclose()

    async def with_aiohttp() -> None:
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                for _ in range(per):
                    async with session.post(
                        url + "/verify", data=body, headers={"content-type": "application/json"}
                    ) as response:
                        assert (await response.json())["isValid"]

            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

    async def raw() -> None:
        load = await http_load(
            url + "/verify",
            [(body, {})] * count,
            CONCURRENCY,
            lambda status, answer: None if status == 200 else f"HTTP {status}",
        )
        assert not load.failures, load.failures[:3]

    async def timed(fn: Any) -> float:
        started = time.perf_counter()
        await fn()
        return (time.perf_counter() - started) / count * 1000

    def short_circuit() -> Any:
        @contextlib.contextmanager
        def patched() -> Iterator[None]:
            had, saved = "sniffio" in sys.modules, sys.modules.get("sniffio")
            sys.modules["sniffio"] = None  # type: ignore[assignment]  # import fails at once
            try:
                yield
            finally:
                if had:
                    sys.modules["sniffio"] = saved  # type: ignore[assignment]
                else:
                    del sys.modules["sniffio"]

        async def run() -> None:
            with patched():
                await sdk()

        return run

    variants = {
        "httpx (SDK client, as shipped)": sdk,
        "httpx, failed 'import sniffio' short-circuited": short_circuit(),
        "aiohttp": with_aiohttp,
        "raw asyncio streams": raw,
    }
    await sdk()  # warm-up: connections, imports
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(3):  # interleaved rounds; the median of each
        for name, fn in variants.items():
            samples[name].append(await timed(fn))
    out = {name: median(values) for name, values in samples.items()}
    return {k: round(v, 2) for k, v in out.items()}


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    n = 2_000 if quick else N
    budget = 30.0 if quick else PASS_BUDGET_S
    bound = n * LATENCY_MS / 1000 / CONCURRENCY
    result = FigureResult("4", f"one pass over {n:,} due payments, facilitator at 20 ms")
    started = time.perf_counter()
    payload, requirements = await signed_payment()
    passes: list[float] = []
    memory: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bindu-bench-") as tmp:
        path = str(Path(tmp) / "backlog.db")
        storage = SqliteStorage(path)
        await storage.open()
        await storage.close()
        base = utcnow() - timedelta(days=1)
        await asyncio.to_thread(
            sqlite_history,
            path,
            0,
            n,
            base=base,
            payload=payload,
            requirements=requirements,
            mode="all_due",
        )
        async with fake_facilitator(verify_ms=LATENCY_MS) as url:
            settings = X402Settings(
                facilitator_url=url,
                rpc_urls={},
                reconciliation=ReconciliationSettings(batch_size=n, concurrency=CONCURRENCY),
            )
            storage = SqliteStorage(path)
            await storage.open()
            db = await aiosqlite.connect(path, isolation_level=None)
            client = make_facilitator_client(settings)
            reconciler = Reconciler(storage, settings, facilitator=client, owner="bench-wide")
            covered = service.MAX_BATCHES_PER_PASS * settings.reconciliation.batch_size
            default_cover = service.MAX_BATCHES_PER_PASS * ReconciliationSettings().batch_size
            try:
                spent = 0.0
                for run in range(MAX_RUNS):
                    # As many passes as fit the budget: at least one, at most MAX_RUNS.
                    if run and spent + passes[-1] > budget:
                        break
                    await _reset(db, stamp(base))
                    rss_before = vm_status("VmRSS")
                    maxrss_before = peak_rss_mib()
                    hwm_reset = reset_peak_rss()
                    t0 = time.perf_counter()
                    outcomes = await reconciler.run_pass(now=utcnow())
                    elapsed = time.perf_counter() - t0
                    passes.append(elapsed)
                    spent += elapsed
                    if run == 0:
                        hwm = vm_status("VmHWM")
                        memory["rss_before_mib"] = round(rss_before or 0, 1)
                        memory["peak_rss_during_pass_mib"] = round(hwm or 0, 1)
                        memory["peak_rss_delta_mib"] = (
                            round((hwm or 0) - (rss_before or 0), 1) if hwm_reset else None
                        )
                        memory["ru_maxrss_delta_mib"] = round(peak_rss_mib() - maxrss_before, 1)
                    retries = sum(1 for o in outcomes if o.decision.verdict is Verdict.RETRY)
                    written = sum(1 for o in outcomes if o.written)
                    if len(outcomes) != min(n, covered) or written != len(outcomes):
                        raise RuntimeError(f"pass covered {len(outcomes)}, wrote {written}")
                    print(
                        f"  pass {run}: {len(outcomes):,} payments in {elapsed:.2f} s"
                        f" ({retries:,} retries)",
                        flush=True,
                    )
                # The records a pass holds: one claim of the whole backlog under tracemalloc.
                await _reset(db, stamp(base))
                tracemalloc.start()
                batch = await storage.claim_due_payments(
                    now=utcnow(), limit=n, owner="bench-trace", lease_seconds=60
                )
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                memory["tracemalloc_claim_peak_mib"] = round(peak / 2**20, 1)
                memory["claimed"] = len(batch)
                del batch
                costs = await _client_costs(url, payload, requirements)
            finally:
                await reconciler.close()
                await client.aclose()
                await db.close()
                await storage.close()
    measured = median(passes)
    ratio = measured / bound
    result.add(
        f"pass over {n:,} (batch {n:,}, concurrency {CONCURRENCY})",
        round(measured, 2),
        "s",
        note=f"bound N x 20 ms / {CONCURRENCY} = {bound:.2f} s",
    )
    result.add("pass / bound", round(ratio, 2), "x", target=f"<= {TARGET}x", ok=ratio <= TARGET)
    result.add("peak RSS growth during the pass", memory.get("peak_rss_delta_mib", "n/a"), "MiB")
    result.add(
        f"tracemalloc peak of claiming {n:,} records",
        memory["tracemalloc_claim_peak_mib"],
        "MiB",
    )
    result.add(
        "payments one pass may cover",
        f"{covered:,} at batch {n:,}; {default_cover:,} at the default batch",
        note=f"MAX_BATCHES_PER_PASS = {service.MAX_BATCHES_PER_PASS}",
    )
    ideal = LATENCY_MS / CONCURRENCY
    for name, value in costs.items():
        result.add(
            f"/verify at {CONCURRENCY} in flight: {name}",
            value,
            "ms/request",
            note=f"ideal {ideal:.3f}",
        )
    result.details = {
        "n": n,
        "runs": len(passes),
        "pass_budget_s": budget,
        "pass_runs_s": [round(x, 3) for x in passes],
        "bound_s": bound,
        "memory": memory,
        "client_ms_per_request": costs,
        "max_batches_per_pass": service.MAX_BATCHES_PER_PASS,
        "storage": "sqlite",
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
