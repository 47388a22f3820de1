"""Figure 5: paid against unpaid ``message/send`` throughput, and where a paid request's
time goes.

Two ``bindu serve`` processes, identical but for payments: SQLite storage, the echo
agent, blocking ``message/send``, LOG_LEVEL=WARNING. The paid one uses bench.fakefac
(its own process), which answers ``/supported``, ``/verify`` and ``/settle`` at once with
success and a fresh transaction hash. Clients: ``CONCURRENCY`` keep-alive connections over
loopback sending a fixed number of requests; paid requests carry a ``PAYMENT-SIGNATURE``
signed ahead of time by the SDK client (one per request, each with its own nonce, for the
server's own 402), so signing costs nothing during the run. Paid and unpaid runs alternate.

The profile: one more paid run against a third server under cProfile (the event loop's
thread), its time attributed to facilitator HTTP round trips, storage, payload decode,
the agent, and the rest (HTTP, JSON-RPC, the event loop).

``python -m bench.throughput [--quick] [--json PATH]``
"""

from __future__ import annotations

import asyncio
import json
import os
import pstats
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from x402.http.utils import encode_payment_signature_header

from bench.common import (
    AMOUNT,
    ASSET,
    NETWORK,
    PAY_TO,
    FigureResult,
    child,
    fake_facilitator,
    free_port,
    http_load,
    median,
    percentile,
    quiet,
    run_figure,
    wait_healthy,
)
from bindu.devnet.client import PayingClient, message_send_params, parse_payment_required

CONCURRENCY = 16
AGENT = "bindu.examples.echo:agent"


def _server_env(db: str, port: int, facilitator: str | None) -> dict[str, str]:
    env = {
        "STORAGE__URL": f"sqlite:///{db}",
        "SERVER__HOST": "127.0.0.1",
        "SERVER__PORT": str(port),
        "LOG_LEVEL": "WARNING",
    }
    if facilitator:
        env.update(
            {
                "X402__FACILITATOR_URL": facilitator,
                "X402__PAY_TO": PAY_TO,
                "X402__NETWORK": NETWORK,
                "X402__ASSET": ASSET,
                "X402__AMOUNT": AMOUNT,
                "X402__ASSET_NAME": "USD Coin",
                "X402__ASSET_VERSION": "2",
            }
        )
    return env


def _body(i: int) -> bytes:
    params = message_send_params(f"hello {i}")
    return json.dumps(
        {"jsonrpc": "2.0", "id": i, "method": "message/send", "params": params}
    ).encode()


def _check(paid: bool) -> Any:
    def ok(status: int, body: bytes) -> str | None:
        if status != 200:
            return f"HTTP {status}: {body[:200]!r}"
        if b'"completed"' not in body:
            return f"not completed: {body[:300]!r}"
        if paid and b"payment-completed" not in body:
            return f"not paid: {body[:300]!r}"
        return None

    return ok


async def _payment_headers(url: str, count: int) -> list[dict[str, str]]:
    """``count`` payments signed ahead of time by the SDK client, each with its own nonce
    (the paywall checks every signature locally, so a varied nonce would be a forgery)."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            url + "/",
            json={
                "jsonrpc": "2.0",
                "id": 0,
                "method": "message/send",
                "params": message_send_params("price?"),
            },
        )
    if response.status_code != 402:
        raise RuntimeError(f"expected 402 from the paid server, got {response.status_code}")
    required = parse_payment_required(response)
    out = []
    async with PayingClient(url, Account.create()) as client:
        for _ in range(count):
            header = encode_payment_signature_header(await client.sign(required))
            out.append({"PAYMENT-SIGNATURE": header})
    return out


def _serve_args(profile: str | None = None) -> list[str]:
    if profile:
        return [
            sys.executable,
            "-m",
            "bench.profiled_server",
            "--agent",
            AGENT,
            "--profile",
            profile,
        ]
    return [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", AGENT]


# Where a paid request's event-loop time goes. A category is a set of functions; its time
# is the cumulative time of calls into it from outside it (so a category's functions
# calling one another are not counted twice). The categories do not overlap.
def _in(*paths: str) -> Any:
    return lambda path, func: any(p in path for p in paths)


def _named(*anchors: tuple[str, str]) -> Any:
    return lambda path, func: any(path.endswith(p) and func == f for p, f in anchors)


CATEGORIES: dict[str, Any] = {
    "facilitator HTTP round trips (/verify, /settle)": _in("x402/http/facilitator_client.py"),
    "storage (bindu.storage over aiosqlite)": _in("/bindu/storage/"),
    "payment payload decode and checks": _named(
        ("bindu/payments/paywall.py", "_decode"),
        ("bindu/payments/paywall.py", "_authorization"),
        ("bindu/payments/paywall.py", "_check_authorization"),
        ("bindu/payments/signature.py", "check_signature"),
        ("x402/server_base.py", "find_matching_requirements"),
    ),
    "agent (echo, run in a thread)": _named(("bindu/agent.py", "call_agent")),
}
IDLE = {("~", "<method 'poll' of 'select.epoll' objects>")}
# Self time by package: a second, disjoint view (each function's own time, no callees).
PACKAGES = (
    ("event loop (asyncio, selectors)", ("/asyncio/", "selectors.py")),
    ("HTTP client (httpx, httpcore, anyio)", ("/httpx/", "/httpcore/", "/anyio/")),
    ("h11 (HTTP/1.1 parsing, server and client)", ("/h11/",)),
    ("HTTP server (uvicorn, starlette)", ("/uvicorn/", "/starlette/")),
    ("import machinery (failed imports)", ("<frozen importlib", "posix.stat")),
    ("pydantic (validation, serialisation)", ("/pydantic/", "pydantic_core")),
    ("json", ("/json/",)),
    ("SQLite client (aiosqlite, sqlite3)", ("/aiosqlite/", "sqlite3")),
    ("thread handoffs (aiosqlite, to_thread queues)", ("SimpleQueue", "/threading.py")),
    ("sockets (send, recv)", ("_socket.socket",)),
    ("x402 SDK", ("/x402/",)),
    ("bindu", ("/bindu/",)),
)


def attribute(profile_path: str, requests: int) -> dict[str, Any]:
    stats = pstats.Stats(profile_path)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    busy = sum(tt for key, (_, _, tt, _, _) in raw.items() if (key[0], key[2]) not in IDLE)
    idle = sum(tt for key, (_, _, tt, _, _) in raw.items() if (key[0], key[2]) in IDLE)
    categories: dict[str, float] = {}
    for name, member in CATEGORIES.items():
        total = 0.0
        for (path, _, func), (_, _, _, _, callers) in raw.items():
            if not member(path, func):
                continue
            for (c_path, _, c_func), edge in callers.items():
                if not member(c_path, c_func):
                    total += edge[3]  # cumulative time of the calls along this edge
        categories[name] = total
    categories["HTTP serving, JSON-RPC, event loop (the rest)"] = busy - sum(categories.values())
    by_package: dict[str, float] = {}
    for (path, _, func), (_, _, tt, _, _) in raw.items():
        if (path, func) in IDLE:
            continue
        where = f"{path} {func}"
        name = next((n for n, marks in PACKAGES if any(m in where for m in marks)), "other")
        by_package[name] = by_package.get(name, 0.0) + tt
    top = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
    listing = []
    for (path, line, func), (_, nc, _tt, ct, _) in top:
        if (path, func) in IDLE or (func.startswith("<") and path == "~"):
            continue
        short = "/".join(Path(path).parts[-2:]) if path != "~" else ""
        listing.append({"function": f"{short}:{line}({func})", "calls": nc, "cum_s": round(ct, 3)})
        if len(listing) == 25:
            break
    return {
        "busy_s": round(busy, 3),
        "idle_s": round(idle, 3),
        "per_request_ms": round(busy / requests * 1000, 3),
        "categories_s": {k: round(v, 3) for k, v in categories.items()},
        "categories_share": {k: round(v / busy, 3) for k, v in categories.items()},
        "self_time_share_by_package": {
            k: round(v / busy, 3) for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])
        },
        "top_cumulative": listing,
    }


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    n = 150 if quick else 300
    runs = 2 if quick else 5
    result = FigureResult("5", "paid vs unpaid message/send throughput (instant facilitator)")
    started = time.perf_counter()
    rates: dict[str, list[float]] = {"paid": [], "unpaid": []}
    latency: dict[str, list[float]] = {"paid": [], "unpaid": []}
    failures: dict[str, list[str]] = {"paid": [], "unpaid": []}
    with tempfile.TemporaryDirectory(prefix="bindu-bench-") as tmp:
        async with fake_facilitator() as fac:
            ports = {"paid": free_port(), "unpaid": free_port()}
            envs = {
                "paid": _server_env(f"{tmp}/paid.db", ports["paid"], fac),
                "unpaid": _server_env(f"{tmp}/unpaid.db", ports["unpaid"], None),
            }
            urls = {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
            async with (
                child(_serve_args(), envs["paid"], log=f"{tmp}/paid.log") as paid_proc,
                child(_serve_args(), envs["unpaid"], log=f"{tmp}/unpaid.log") as unpaid_proc,
            ):
                await wait_healthy(urls["paid"], paid_proc, log=f"{tmp}/paid.log")
                await wait_healthy(urls["unpaid"], unpaid_proc, log=f"{tmp}/unpaid.log")
                warm = 50
                total = warm + n * runs
                paid_headers = await _payment_headers(urls["paid"], total)
                plan = {
                    "paid": [(_body(i), paid_headers[i]) for i in range(total)],
                    "unpaid": [(_body(i), {}) for i in range(total)],
                }
                for mode in ("paid", "unpaid"):  # warm-up, not counted
                    await http_load(urls[mode], plan[mode][:warm], CONCURRENCY, _check(False))
                for run in range(runs):
                    order = ("paid", "unpaid") if run % 2 == 0 else ("unpaid", "paid")
                    for mode in order:
                        lo = warm + run * n
                        load = await http_load(
                            urls[mode], plan[mode][lo : lo + n], CONCURRENCY, _check(mode == "paid")
                        )
                        rates[mode].append(load.rate)
                        latency[mode] += load.latencies
                        failures[mode] += load.failures
                        print(f"  {mode:6} run {run}: {load.rate:.1f} req/s", flush=True)
            # The profile: a third, paid server under cProfile, one run.
            profile_path = f"{tmp}/paid.prof"
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = _server_env(f"{tmp}/profiled.db", port, fac)
            async with child(_serve_args(profile_path), env, log=f"{tmp}/profiled.log") as proc:
                await wait_healthy(url, proc, log=f"{tmp}/profiled.log")
                headers = await _payment_headers(url, n)
                requests = [(_body(i), headers[i]) for i in range(n)]
                await http_load(url, requests[:20], CONCURRENCY, _check(True))  # warm-up
                proc.send_signal(signal.SIGUSR1)  # start profiling: start-up stays out
                await asyncio.sleep(0.2)
                profiled = await http_load(url, requests[20:], CONCURRENCY, _check(True))
            profile = attribute(profile_path, n - 20)
            if os.environ.get("BINDU_BENCH_KEEP_PROFILE"):
                shutil.copy(profile_path, os.environ["BINDU_BENCH_KEEP_PROFILE"])
    paid, unpaid = median(rates["paid"]), median(rates["unpaid"])
    result.add("unpaid message/send", round(unpaid, 1), "req/s")
    result.add("paid message/send", round(paid, 1), "req/s")
    result.add("paid / unpaid", round(paid / unpaid, 2), "x")
    result.add(
        "p50 latency paid / unpaid",
        f"{percentile(latency['paid'], 0.5) * 1000:.1f} / "
        f"{percentile(latency['unpaid'], 0.5) * 1000:.1f}",
        "ms",
    )
    result.add(
        "failed requests (paid, unpaid)", f"{len(failures['paid'])}, {len(failures['unpaid'])}"
    )
    for name, share in profile["categories_share"].items():
        result.add(
            f"profile: {name}",
            round(share * 100, 1),
            "%",
            note=f"{profile['categories_s'][name] / (n - 20) * 1000:.2f} ms/request",
        )
    result.details = {
        "requests_per_run": n,
        "runs": runs,
        "concurrency": CONCURRENCY,
        "rates": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        "failures_sample": {k: v[:3] for k, v in failures.items()},
        "profile": profile,
        "profiled_run_rate": round(profiled.rate, 1),
        "profiled_run_failures": len(profiled.failures),
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
