"""Shared by the benchmark figures: machine facts, statistics, result rows, payment
fixtures (a real SDK-signed payload, nonce varied) and bulk loaders for SQLite/Postgres."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql

PG_URL = os.environ.get("BINDU_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]

NETWORK = "eip155:31337"
ASSET = "0x5fbdb2315678afecb367f032d93f642f64180aa3"
PAY_TO = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8"
AMOUNT = "10000"


def quiet() -> None:
    """No log output: a benchmark measures work, not a terminal."""
    logger.remove()


# ---------------------------------------------------------------------------- statistics


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


@dataclass
class Row:
    """One line of the results table."""

    figure: str
    metric: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    ok: bool | None = None  # None: no target (context figure)
    note: str = ""


@dataclass
class FigureResult:
    figure: str
    title: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, metric: str, value: Any, unit: str = "", **kw: Any) -> None:
        self.rows.append(Row(self.figure, metric, value, unit, **kw))

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "title": self.title,
            "seconds": round(self.seconds, 1),
            "rows": [asdict(r) for r in self.rows],
            "details": self.details,
        }


def format_table(rows: Iterable[dict[str, Any]]) -> str:
    head = ("fig", "metric", "measured", "target", "ok")
    lines = []
    for r in rows:
        value = r["value"]
        if isinstance(value, float):
            value = f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        ok = {True: "yes", False: "NO", None: ""}[r["ok"]]
        measured = f"{value} {r['unit']}".strip()
        if r.get("note"):
            measured += f" ({r['note']})"
        lines.append((r["figure"], r["metric"], measured, r["target"] or "", ok))
    widths = [max(len(str(x[i])) for x in [head, *lines]) for i in range(len(head))]
    out = [" | ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    for line in lines:
        out.append(" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    return "\n".join(out)


def print_result(result: FigureResult) -> None:
    print(f"\n== {result.figure}: {result.title} ({result.seconds:.1f} s)")
    print(format_table(asdict(r) for r in result.rows))


def write_json(path: str | None, result: FigureResult) -> None:
    if path:
        Path(path).write_text(json.dumps(result.to_json(), indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return float("nan")


def postgres_version() -> str:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            return str(row[0]) if row else "unknown"
    except psycopg.Error as exc:
        return f"unreachable ({type(exc).__name__})"


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "memory_gib": _mem_total_gib(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres_version(),
        "platform": platform.platform(),
    }


def peak_rss_mib() -> float:
    """ru_maxrss of this process (KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_status(field_name: str) -> float | None:
    """A /proc/self/status field in MiB (VmRSS, VmHWM), or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs), so the next peak is this phase's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------- payments


async def signed_payment(payer_key: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real x402 v2 PaymentPayload (SDK client, eth_account signer) and its requirements,
    as stored JSON. Benchmarks vary the nonce; the signature then no longer matches, which
    only the (fake) facilitators would notice."""
    from eth_account import Account
    from x402.schemas import PaymentRequired, PaymentRequirements

    from bindu.devnet import PayingClient

    account = Account.from_key(payer_key) if payer_key else Account.create()
    requirements = PaymentRequirements(
        scheme="exact",
        network=NETWORK,
        asset=ASSET,
        amount=AMOUNT,
        pay_to=PAY_TO,
        max_timeout_seconds=300,
        extra={"name": "USD Coin", "version": "2"},
    )
    async with PayingClient("http://127.0.0.1:9", account) as client:
        payload = await client.sign(PaymentRequired(x402_version=2, accepts=[requirements]))
    return (
        payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        requirements.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def stamp(at: datetime) -> str:
    """The fixed-width UTC text SqliteStorage stores; Postgres parses it as timestamptz."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


SETTLE_TIMEOUT_ERROR = "settle_timeout: no answer within 15s"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def fresh_schema_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# ---------------------------------------------------------------------------- processes


_OWN_PREFIXES = ("X402__", "STORAGE__", "SERVER__", "LOG_LEVEL")


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without bindu's own variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
    return {**base, **(env or {})}


def log_file(path: str | Path) -> Any:
    # Handed to a child process; the caller closes it once the child has it.
    return open(path, "ab")


@asynccontextmanager
async def child(
    args: list[str], env: dict[str, str] | None = None, *, log: str | Path | None = None
) -> AsyncIterator[Any]:
    """A child process with a clean environment (stdout piped, or appended to ``log``),
    terminated on exit, killed if it does not stop."""
    out = log_file(log) if log else asyncio.subprocess.PIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            *args,
            cwd=REPO,
            env=clean_env(env),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    finally:
        if log:
            out.close()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def fake_facilitator(
    *, verify_ms: float = 0.0, settle_ms: float = 0.0, network: str = NETWORK
) -> AsyncIterator[str]:
    """bench.fakefac in its own process (its CPU is not the measured process's); its URL."""
    args = [sys.executable, "-m", "bench.fakefac", "--port", "0", "--network", network]
    args += ["--verify-ms", str(verify_ms), "--settle-ms", str(settle_ms)]
    async with child(args) as proc:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"PORT "):
            raise RuntimeError(f"fake facilitator did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"


def _tail(path: str | Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-3000:]
    except OSError:
        return ""


async def wait_healthy(
    url: str, proc: Any, timeout: float = 60.0, log: str | Path | None = None
) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                out = await proc.stdout.read() if proc.stdout else b""
                text = out.decode(errors="replace")[-2000:] or _tail(log)
                raise RuntimeError(f"server exited early ({proc.returncode}): {text}")
            try:
                if (await client.get(url + "/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- load generation


@dataclass
class Load:
    """Outcome of ``http_load``: wall time, per-request latencies, failures."""

    seconds: float
    latencies: list[float]
    failures: list[str]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


async def http_load(
    url: str,
    requests: Sequence[tuple[bytes, dict[str, str]]],
    concurrency: int,
    ok: Any = None,
) -> Load:
    """POST ``requests`` (body, headers) to ``url`` over ``concurrency`` keep-alive
    connections, each sending its share one after another.

    A minimal HTTP/1.1 client on asyncio streams: httpx costs milliseconds of CPU per
    request here (see docs/benchmarks.md), and this process shares two cores with the
    server it measures, so the client must be cheap. ``ok(status, body)`` checks each
    answer; a failure is recorded with its reason."""
    host, _, rest = url.removeprefix("http://").partition(":")
    port_text, _, path = rest.partition("/")
    port, path = int(port_text), "/" + path
    queue: asyncio.Queue[tuple[bytes, dict[str, str]]] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    latencies: list[float] = []
    failures: list[str] = []

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while not queue.empty():
                body, headers = queue.get_nowait()
                head = (
                    f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\n"
                    "content-type: application/json\r\n"
                )
                for name, value in headers.items():
                    head += f"{name}: {value}\r\n"
                head += f"content-length: {len(body)}\r\n\r\n"
                started = time.perf_counter()
                writer.write(head.encode() + body)
                await writer.drain()
                raw = await reader.readuntil(b"\r\n\r\n")
                lines = raw.decode("latin-1").split("\r\n")
                status = int(lines[0].split(" ")[1])
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                problem = ok(status, answer) if ok else None
                if problem:
                    failures.append(problem)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(time.perf_counter() - started, latencies, failures)


def run_figure(description: str | None, measure: Callable[[bool], Awaitable[FigureResult]]) -> None:
    """The command line of one figure: ``--quick`` and ``--json PATH``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = asyncio.run(measure(args.quick))
    print_result(result)
    write_json(args.json, result)
