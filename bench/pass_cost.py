"""Figure 1: storage cost of one reconciliation pass against history size.

Histories of 1,000 / 100,000 / 1,000,000 paid tasks (a payment record each, final
statuses; see bench/history.py) with exactly 100 payment-failed records due, all older
than the newest 100 tasks. One store per size, on SQLite and on Postgres; the sizes are
measured in interleaved rounds so drift (checkpoints, the other backend's load) hits all
sizes alike. Three things are timed:

* ours: the real ``Reconciler.run_pass(now=...)`` whose probes answer at once, so the
  pass is its storage part: ``claim_due_payments`` of the batch, then one
  ``transition_payment`` per record (half retry; half a final verdict, which also reads
  the task and rewrites it in the verdict's transaction). Due rows are reset between runs.
* the first attempt: the newest 100 tasks, newest first, decoded and filtered in Python
  for payment-failed; its recall is the share of the 100 due payments it sees at all.
* a naive full scan: one SQL query on the tasks table filtering on the JSON metadata
  (no index can serve it), decoded and filtered the same way.

``python -m bench.pass_cost [--quick] [--json PATH]``
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import psycopg
from psycopg import sql
from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED

from bench.common import (
    PG_URL,
    SETTLE_TIMEOUT_ERROR,
    FigureResult,
    drop_schema,
    fresh_schema_name,
    median,
    ms,
    quiet,
    run_figure,
    signed_payment,
    stamp,
)
from bench.history import Loaded, pg_drop_indexes, pg_finish, pg_history, sqlite_history
from bindu.a2a import Task, utcnow
from bindu.payments.records import PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.reconcile.evidence import Evidence, VerifyEvidence
from bindu.reconcile.service import Reconciler
from bindu.settings import ReconciliationSettings, X402Settings
from bindu.storage.base import Storage
from bindu.storage.memory import MemoryStorage
from bindu.storage.postgres import PostgresStorage
from bindu.storage.sqlite import SqliteStorage

DUE = 100
NEWEST = 100
SIZES = (1_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 20_000)
TARGET_RATIO = 1.2
WARMUP = 3
PG_LOADERS = 2  # connections loading the largest Postgres history at once


class InstantProbes(Reconciler):
    """The real Reconciler whose probes answer at once: ``nonce_already_used`` (a final
    verdict, orphaned) for ``orphan_ids``, "unused and still valid" (retry) for the rest."""

    def __init__(self, storage: Storage, orphan_ids: set[str]) -> None:
        settings = X402Settings(
            reconciliation=ReconciliationSettings(batch_size=DUE, concurrency=DUE)
        )
        super().__init__(storage, settings, facilitator=None, owner="bench-pass-cost")
        self.orphan_ids = orphan_ids

    async def _probe(self, record: PaymentRecord) -> Evidence:
        if record.id in self.orphan_ids:
            return VerifyEvidence(False, ERR_NONCE_ALREADY_USED)
        return VerifyEvidence(True, None)


class Store:
    """One history of one size in one backend, with the raw queries the figure needs."""

    backend = ""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded = Loaded()
        self.storage: Storage
        self.passes: list[float] = []
        self.claims: list[float] = []
        self.first: list[float] = []
        self.scans: list[float] = []
        self.recall_first = 0.0
        self.recall_scan = 0.0
        self.load_s = 0.0
        self.reconciler: InstantProbes | None = None

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def reset_due(self, due_at: datetime) -> None: ...
    async def newest_tasks(self, limit: int) -> list[Any]:
        raise NotImplementedError

    async def failed_by_scan(self) -> list[Any]:
        raise NotImplementedError

    def disk(self) -> str:
        return ""


class SqliteStore(Store):
    backend = "sqlite"

    def __init__(self, size: int, directory: str) -> None:
        super().__init__(size)
        self.path = str(Path(directory) / f"history-{size}.db")
        self.storage = SqliteStorage(self.path)
        self._db: aiosqlite.Connection | None = None

    async def migrate(self) -> None:
        await self.storage.open()
        await self.storage.close()

    def load(self, base: datetime, payload: dict[str, Any], requirements: dict[str, Any]) -> None:
        started = time.perf_counter()
        self.loaded = sqlite_history(
            self.path, 0, self.size, base=base, payload=payload, requirements=requirements
        )
        self.load_s = time.perf_counter() - started

    async def open(self) -> None:
        self.storage = SqliteStorage(self.path)
        await self.storage.open()
        self._db = await aiosqlite.connect(self.path, isolation_level=None)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
        await self.storage.close()

    def _reader(self) -> aiosqlite.Connection:
        assert self._db is not None
        return self._db

    async def reset_due(self, due_at: datetime) -> None:
        db = self._reader()
        await db.execute("BEGIN IMMEDIATE")
        await db.executemany(
            "UPDATE payments SET status = 'payment-failed', attempts = 0, next_check_at = ?,"
            " lease_owner = NULL, lease_expires_at = NULL, receipt = NULL, verdict_at = NULL,"
            " settle_tx = NULL, error = ?, answers = '[]' WHERE id = ?",
            [(stamp(due_at), SETTLE_TIMEOUT_ERROR, pid) for pid in self.loaded.due_payment_ids],
        )
        await db.executemany(
            "UPDATE tasks SET data = ?, state = 'failed' WHERE id = ?",
            [(doc, tid) for tid, doc in self.loaded.due_task_docs.items()],
        )
        await db.execute("COMMIT")

    async def newest_tasks(self, limit: int) -> list[Any]:
        rows = await self._reader().execute_fetchall(
            "SELECT data FROM tasks ORDER BY created_at DESC, id DESC LIMIT ?", (limit,)
        )
        return [row[0] for row in rows]

    async def failed_by_scan(self) -> list[Any]:
        rows = await self._reader().execute_fetchall(
            "SELECT data FROM tasks"
            " WHERE json_extract(data, '$.metadata.\"x402.payment.status\"') = 'payment-failed'"
        )
        return [row[0] for row in rows]

    def disk(self) -> str:
        size = sum(
            p.stat().st_size for p in Path(self.path).parent.glob(Path(self.path).name + "*")
        )
        return f"{size / 2**20:,.0f} MiB"


class PostgresStore(Store):
    backend = "postgres"

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.schema = fresh_schema_name(f"bindu_bench_{size}")
        self.storage = PostgresStorage(PG_URL, schema=self.schema)
        self._db: psycopg.AsyncConnection[Any] | None = None

    async def migrate(self) -> None:
        await self.storage.open()
        await self.storage.close()

    def load(self, base: datetime, payload: dict[str, Any], requirements: dict[str, Any]) -> None:
        started = time.perf_counter()
        indexes = pg_drop_indexes(PG_URL, self.schema)
        loaders = PG_LOADERS if self.size >= 100_000 else 1
        step = -(-self.size // loaders)
        ranges = [(lo, min(self.size, lo + step)) for lo in range(0, self.size, step)]
        with concurrent.futures.ThreadPoolExecutor(len(ranges)) as pool:
            futures = [
                pool.submit(
                    pg_history,
                    PG_URL,
                    self.schema,
                    lo,
                    hi,
                    base=base,
                    payload=payload,
                    requirements=requirements,
                )
                for lo, hi in ranges
            ]
            for future in futures:
                future.result()
        self.loaded = pg_finish(PG_URL, self.schema, indexes)
        self.load_s = time.perf_counter() - started

    async def open(self) -> None:
        self.storage = PostgresStorage(PG_URL, schema=self.schema)
        await self.storage.open()
        self._db = await psycopg.AsyncConnection.connect(PG_URL, autocommit=True)
        await self._db.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
        await self.storage.close()

    def _reader(self) -> psycopg.AsyncConnection[Any]:
        assert self._db is not None
        return self._db

    async def reset_due(self, due_at: datetime) -> None:
        async with self._reader().cursor() as cur:
            await cur.execute(
                "UPDATE payments SET status = 'payment-failed', attempts = 0,"
                " next_check_at = %s, lease_owner = NULL, lease_expires_at = NULL,"
                " receipt = NULL, verdict_at = NULL, settle_tx = NULL, error = %s,"
                " answers = '[]'::jsonb WHERE id = ANY(%s)",
                (due_at, SETTLE_TIMEOUT_ERROR, self.loaded.due_payment_ids),
            )
            await cur.executemany(
                "UPDATE tasks SET data = %s::jsonb, state = 'failed' WHERE id = %s",
                [(doc, tid) for tid, doc in self.loaded.due_task_docs.items()],
            )

    async def newest_tasks(self, limit: int) -> list[Any]:
        async with self._reader().cursor() as cur:
            await cur.execute(
                "SELECT data FROM tasks ORDER BY created_at DESC, id DESC LIMIT %s", (limit,)
            )
            return [row[0] for row in await cur.fetchall()]

    async def failed_by_scan(self) -> list[Any]:
        async with self._reader().cursor() as cur:
            await cur.execute(
                "SELECT data FROM tasks"
                " WHERE data->'metadata'->>'x402.payment.status' = 'payment-failed'"
            )
            return [row[0] for row in await cur.fetchall()]

    def disk(self) -> str:
        with psycopg.connect(PG_URL) as conn:
            row = conn.execute(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid)))"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind = 'r'",
                (self.schema,),
            ).fetchone()
        return str(row[0]) if row else "?"

    def drop(self) -> None:
        drop_schema(PG_URL, self.schema)


def _failed_ids(docs: list[Any]) -> set[str]:
    """What the first attempt does with the rows: decode each task, keep payment-failed."""
    found = set()
    for doc in docs:
        task = Task.model_validate_json(doc) if isinstance(doc, str) else Task.model_validate(doc)
        if task.metadata.get("x402.payment.status") == "payment-failed":
            found.add(task.id)
    return found


async def _timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = await fn()
    return time.perf_counter() - started, value


async def _one_pass(store: Store, now: datetime, due_at: datetime, counted: bool) -> None:
    assert store.reconciler is not None
    await store.reset_due(due_at)
    elapsed, outcomes = await _timed(lambda: store.reconciler.run_pass(now=now))  # type: ignore[union-attr]
    if len(outcomes) != DUE or not all(o.written for o in outcomes):
        raise RuntimeError(f"{store.backend} {store.size}: pass wrote {len(outcomes)} verdicts")
    if counted:
        store.passes.append(elapsed)


async def _one_claim(store: Store, now: datetime, due_at: datetime) -> None:
    await store.reset_due(due_at)
    elapsed, batch = await _timed(
        lambda: store.storage.claim_due_payments(
            now=now, limit=DUE, owner="bench-claim", lease_seconds=60
        )
    )
    if len(batch) != DUE:
        raise RuntimeError(f"claim returned {len(batch)}")
    store.claims.append(elapsed)


async def measure_backend(stores: list[Store], runs: int, scan_runs: int) -> None:
    now = utcnow()
    due_at = now - timedelta(days=1)
    for store in stores:
        await store.open()
        store.reconciler = InstantProbes(store.storage, set(store.loaded.due_payment_ids[::2]))
    try:
        for round_ in range(WARMUP + runs):
            for store in stores:
                await _one_pass(store, now, due_at, counted=round_ >= WARMUP)
        for _ in range(runs):
            for store in stores:
                await _one_claim(store, now, due_at)
        for store in stores:
            await store.reset_due(due_at)
        for _ in range(runs):
            for store in stores:
                due = set(store.loaded.due_task_ids)
                elapsed, found = await _timed(lambda s=store: _decoded(s.newest_tasks(NEWEST)))
                store.first.append(elapsed)
                store.recall_first = len(found & due) / DUE
        for run in range(scan_runs):
            for store in stores:
                if store.size >= 1_000_000 and run >= 3:
                    continue  # seconds each on SQLite: three runs are enough
                due = set(store.loaded.due_task_ids)
                elapsed, found = await _timed(lambda s=store: _decoded(s.failed_by_scan()))
                store.scans.append(elapsed)
                store.recall_scan = len(found & due) / DUE
    finally:
        for store in stores:
            if store.reconciler is not None:
                await store.reconciler.close()
            await store.close()


async def memory_floor(store: Store, runs: int) -> float:
    """The same pass over the same 100 records held in MemoryStorage (no I/O): the part
    of a pass that is not storage (claim bookkeeping, decide, task metadata, metrics)."""
    await store.open()
    try:
        records = [await store.storage.get_payment(pid) for pid in store.loaded.due_payment_ids]
        tasks = [await store.storage.get_task(tid) for tid in store.loaded.due_task_ids]
    finally:
        await store.close()
    now = utcnow()
    times = []
    for _ in range(WARMUP + runs):
        memory = MemoryStorage()
        await memory.open()
        for record, task in zip(records, tasks, strict=True):
            assert record is not None and task is not None
            claimed = record.evolve(status=PaymentStatus.CLAIMED)
            await memory.claim_payment(claimed)
            await memory.transition_payment(
                record.id,
                {PaymentStatus.CLAIMED},
                PaymentUpdate(status=PaymentStatus.FAILED, next_check_at=record.next_check_at),
                now=record.created_at,
                task=task,
            )
        reconciler = InstantProbes(memory, set(store.loaded.due_payment_ids[::2]))
        elapsed, outcomes = await _timed(lambda r=reconciler: r.run_pass(now=now))
        assert len(outcomes) == DUE
        times.append(elapsed)
        await reconciler.close()
    return median(times[WARMUP:])


async def _decoded(rows: Awaitable[list[Any]]) -> set[str]:
    return _failed_ids(await rows)


def _summary(store: Store) -> dict[str, Any]:
    return {
        "pass_ms": ms(median(store.passes)),
        "pass_runs_ms": [ms(x) for x in store.passes],
        "claim_ms": ms(median(store.claims)),
        "first_attempt_ms": ms(median(store.first)),
        "first_attempt_recall": store.recall_first,
        "full_scan_ms": ms(median(store.scans)),
        "full_scan_runs": len(store.scans),
        "full_scan_recall": store.recall_scan,
        "load_s": round(store.load_s, 1),
        "disk": store.disk(),
    }


def _add_rows(result: FigureResult, name: str, out: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(out)
    small, large = out[sizes[0]], out[sizes[-1]]
    for size in sizes:
        result.add(f"{name}: pass, {size:,} tasks", out[size]["pass_ms"], "ms")
    ratio = large["pass_ms"] / small["pass_ms"]
    result.add(
        f"{name}: pass {sizes[-1]:,} / {sizes[0]:,}",
        round(ratio, 2),
        "x",
        target=f"<= {TARGET_RATIO}x",
        ok=ratio <= TARGET_RATIO,
    )
    result.add(
        f"{name}: claim alone, {sizes[0]:,} / {sizes[-1]:,}",
        f"{small['claim_ms']} / {large['claim_ms']}",
        "ms",
    )
    for size in sizes:
        f = out[size]
        result.add(
            f"{name}: first attempt, {size:,}",
            f"{f['first_attempt_ms']} ms, recall {f['first_attempt_recall']:.0%}",
        )
    for size in sizes:
        f = out[size]
        result.add(
            f"{name}: full scan (SQL, no index), {size:,}",
            f"{f['full_scan_ms']} ms, recall {f['full_scan_recall']:.0%}",
        )


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    result = FigureResult("1", "pass cost against history size (100 due payments)")
    started = time.perf_counter()
    sizes = QUICK_SIZES if quick else SIZES
    runs = 5 if quick else 11
    scan_runs = 3 if quick else 5
    payload, requirements = await signed_payment()
    base = utcnow() - timedelta(seconds=max(sizes) + 2 * 86_400)
    pg_stores = [PostgresStore(size) for size in sizes]
    with tempfile.TemporaryDirectory(prefix="bindu-bench-") as tmp:
        sq_stores = [SqliteStore(size, tmp) for size in sizes]
        try:
            for s in [*sq_stores, *pg_stores]:
                await s.migrate()

            # Both backends load at once (SQLite in this process, Postgres in its own).
            def load_all(stores: list[Any]) -> None:
                for s in stores:
                    s.load(base, payload, requirements)

            load_started = time.perf_counter()
            await asyncio.gather(
                asyncio.to_thread(load_all, sq_stores), asyncio.to_thread(load_all, pg_stores)
            )
            load_s = time.perf_counter() - load_started
            print(f"  loaded {sum(sizes):,} tasks into each backend in {load_s:.0f} s", flush=True)
            # Write the load out now rather than under the measurements.
            sync_started = time.perf_counter()
            await asyncio.to_thread(os.sync)
            sync_s = time.perf_counter() - sync_started
            print(f"  flushed to disk in {sync_s:.0f} s", flush=True)
            for stores in (sq_stores, pg_stores):
                await measure_backend(list(stores), runs, scan_runs)
                for s in stores:
                    f = _summary(s)
                    print(
                        f"  {s.backend:8} {s.size:>9,}: pass {f['pass_ms']} ms"
                        f" (claim {f['claim_ms']} ms); first attempt {f['first_attempt_ms']} ms,"
                        f" recall {f['first_attempt_recall']:.0%}; full scan"
                        f" {f['full_scan_ms']} ms; {f['disk']}",
                        flush=True,
                    )
            floor_ms = ms(await memory_floor(sq_stores[0], runs))
            print(f"  memory   pass over the same 100 records: {floor_ms} ms", flush=True)
            sqlite = {s.size: _summary(s) for s in sq_stores}
            postgres = {s.size: _summary(s) for s in pg_stores}
        finally:
            for s in pg_stores:
                await asyncio.to_thread(s.drop)
    _add_rows(result, "sqlite", sqlite)
    _add_rows(result, "postgres", postgres)
    result.add("same pass on MemoryStorage (no I/O: the non-storage floor)", floor_ms, "ms")
    result.details = {
        "runs": runs,
        "warmup_passes": WARMUP,
        "full_scan_runs": scan_runs,
        "due": DUE,
        "load_seconds": round(load_s, 1),
        "sync_seconds": round(sync_s, 1),
        "memory_floor_ms": floor_ms,
        "sqlite": {str(k): v for k, v in sqlite.items()},
        "postgres": {str(k): v for k, v in postgres.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
