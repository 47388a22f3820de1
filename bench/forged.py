"""Figure 6: what a forged payment costs the server (issue 10, paywall abuse).

In process: the local EIP-712 signature check (``bindu.payments.signature``), forged and
genuine, and secp256k1 recovery on eth_keys' pure-Python backend for comparison (why
coincurve is a dependency). Over HTTP: one ``bindu serve`` (SQLite, echo agent, payments on,
bench.fakefac as facilitator) answering unpaid calls (402), forged payments while the
client's refusal budget lasts (402) and once it is spent (429). The facilitator's request
counts and the payment rows in the SQLite file show what the forgeries cost beyond CPU.

``python -m bench.forged [--quick] [--json PATH]``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from typing import Any

from eth_keys import KeyAPI
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.schemas import PaymentPayload, PaymentRequirements

from bench.common import (
    FigureResult,
    child,
    free_port,
    http_load,
    median,
    quiet,
    run_figure,
    signed_payment,
    wait_healthy,
)
from bench.throughput import AGENT, CONCURRENCY, _body, _server_env
from bindu.payments.signature import SignatureCheck, check_signature


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def _timed(fn: Any, n: int) -> float:
    """Median seconds of one call of ``fn`` over ``n`` calls."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def _forged_headers(template: dict[str, Any], count: int) -> list[dict[str, str]]:
    """Well-formed payments whose signature belongs to other terms (a fresh nonce each)."""
    out = []
    for _ in range(count):
        doc = json.loads(json.dumps(template))
        doc["payload"]["authorization"]["nonce"] = "0x" + os.urandom(32).hex()
        header = encode_payment_signature_header(PaymentPayload.model_validate(doc))
        out.append({"PAYMENT-SIGNATURE": header})
    return out


def _status(expected: int) -> Any:
    def ok(status: int, body: bytes) -> str | None:
        return None if status == expected else f"HTTP {status}: {body[:200]!r}"

    return ok


def _payment_rows(db: str) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM payments").fetchone()[0])


async def _local(n: int, payload: dict[str, Any], requirements: dict[str, Any]) -> dict[str, Any]:
    reqs = PaymentRequirements.model_validate(requirements)
    inner = ExactEIP3009Payload.from_dict(payload["payload"])
    genuine = inner.signature or ""
    forged = "0x" + "11" * 32 + "22" * 32 + "1b"
    assert check_signature(inner.authorization, genuine, reqs) is SignatureCheck.SIGNED
    assert check_signature(inner.authorization, forged, reqs) is SignatureCheck.FORGED
    native = KeyAPI("eth_keys.backends.NativeECCBackend")
    digest = hash_eip3009_authorization(inner.authorization, 31337, reqs.asset, "USD Coin", "2")
    raw = bytes.fromhex(genuine.removeprefix("0x"))
    signature = native.Signature(raw[:64] + bytes([raw[64] - 27]))
    assert (
        native.ecdsa_recover(digest, signature).to_checksum_address()
        == inner.authorization.from_address
    )
    return {
        "forged_s": _timed(lambda: check_signature(inner.authorization, forged, reqs), n),
        "genuine_s": _timed(lambda: check_signature(inner.authorization, genuine, reqs), n),
        "native_recover_s": _timed(
            lambda: native.ecdsa_recover(digest, signature), max(10, n // 20)
        ),
    }


async def _http(n: int, tmp: str) -> dict[str, Any]:
    fac_args = [sys.executable, "-m", "bench.fakefac", "--port", "0", "--network", "eip155:31337"]
    async with child(fac_args) as fac:
        assert fac.stdout is not None
        line = await asyncio.wait_for(fac.stdout.readline(), 30)
        facilitator = f"http://127.0.0.1:{int(line.split()[1])}"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        db = f"{tmp}/forged.db"
        env = _server_env(db, port, facilitator)
        # Budget large enough that every forgery below is judged (402), then spent (429).
        env["X402__RATE_LIMIT__CLIENT_BURST"] = str(3 * n)
        env["X402__RATE_LIMIT__CLIENT_PER_MINUTE"] = "0.01"  # no refill during the run
        serve = [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", AGENT]
        async with child(serve, env, log=f"{tmp}/server.log") as proc:
            await wait_healthy(url, proc, log=f"{tmp}/server.log")
            payload, _ = await signed_payment()
            unpaid = [(_body(i), {}) for i in range(n)]
            bodies = [_body(i) for i in range(4 * n)]
            forged = list(zip(bodies, _forged_headers(payload, 4 * n), strict=True))
            await http_load(url, unpaid[:50], CONCURRENCY, _status(402))  # warm-up
            loads = {
                "unpaid": await http_load(url, unpaid, CONCURRENCY, _status(402)),
                "forged_402": await http_load(url, forged[:n], CONCURRENCY, _status(402)),
            }
            await http_load(url, forged[n : 3 * n], CONCURRENCY, _status(402))  # spend it
            loads["forged_429"] = await http_load(url, forged[3 * n :], CONCURRENCY, _status(429))
        fac.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(fac.stdout.read(), 20)
    counts = json.loads(rest.decode().strip().splitlines()[-1])
    return {"loads": loads, "facilitator": counts, "rows": _payment_rows(db), "sent": 4 * n}


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    result = FigureResult("6", "what a forged payment costs the server")
    started = time.perf_counter()
    n = 300 if quick else 1000
    payload, requirements = await signed_payment()
    local = await _local(n, payload, requirements)
    with tempfile.TemporaryDirectory(prefix="bindu-bench-forged-") as tmp:
        http = await _http(n, tmp)
    loads, facilitator = http["loads"], http["facilitator"]
    result.add("local signature check, forged", _us(local["forged_s"]), "us")
    result.add("local signature check, genuine", _us(local["genuine_s"]), "us")
    result.add(
        "secp256k1 recovery on eth_keys' pure-Python backend",
        _us(local["native_recover_s"]),
        "us",
        note="what each check would cost without coincurve",
    )
    unpaid = loads["unpaid"].rate
    result.add("unpaid message/send (402)", round(unpaid, 1), "req/s")
    rate_402 = loads["forged_402"].rate
    result.add(
        "forged payment, budget left (402)",
        round(rate_402, 1),
        "req/s",
        note="the signature check is most of it",
    )
    rate_429 = loads["forged_429"].rate
    result.add(
        "forged payment, budget spent (429)",
        round(rate_429, 1),
        "req/s",
        target=">= 90 % of unpaid",
        ok=rate_429 >= 0.9 * unpaid,
    )
    calls = facilitator["verify"] + facilitator["settle"]
    result.add(f"facilitator calls for {http['sent']} forgeries", calls, target="0", ok=calls == 0)
    result.add("payment rows written", http["rows"], target="0", ok=http["rows"] == 0)
    failures = sum(len(load.failures) for load in loads.values())
    result.add("unexpected answers", failures, target="0", ok=failures == 0)
    result.details = {
        "local_seconds": local,
        "rates": {name: load.rate for name, load in loads.items()},
        "facilitator_counts": facilitator,
        "failures": {name: load.failures[:5] for name, load in loads.items()},
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
