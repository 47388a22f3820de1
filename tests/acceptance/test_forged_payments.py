"""Issue 10, must hold 4: forged payments cost the attacker, not us (real `bindu serve`).

1,000 forged-signature payments from one address: no facilitator call, no row written, 402
each until the refusal budget is spent, then 429 with Retry-After, however the attacker
spells X-Forwarded-For. Meanwhile a real payment from another address (a socket bound to
127.0.0.2) is verified, settled and delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sqlite3
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from eth_account import Account
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentPayload

from bindu.devnet import Devnet, PayingClient
from bindu.devnet.client import message_send_params
from bindu.settings import RateLimitSettings
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
FORGED = 1_000
# The defaults are what is tested: an operator changes nothing to get this protection.
DEFAULTS = RateLimitSettings()
CONCURRENCY = 16
INVALID_SIGNATURE = "payment invalid: invalid_exact_evm_payload_signature"
METRICS_TOKEN = "forged-payments-metrics-token"


@pytest.fixture
async def server(devnet: Devnet, tmp_path) -> AsyncIterator[ServerProcess]:
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__RECONCILIATION__ENABLED="false",
        METRICS__TOKEN=METRICS_TOKEN,
    )
    proc = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "server.log").start()
    yield proc
    proc.stop()


def forgeries(template: PaymentPayload, wrong_signer: str, count: int) -> list[str]:
    """Payment headers that pass every check but the signature, each with a fresh nonce:
    the victim's own signature over other terms, someone else's signature, and noise."""
    rng = random.Random(10)
    headers = []
    for n in range(count):
        auth = {**template.payload["authorization"], "nonce": "0x" + os.urandom(32).hex()}
        if n % 3 == 0:
            signature = template.payload["signature"]  # valid, but for another nonce
        elif n % 3 == 1:
            signature = wrong_signer
        else:  # 65 bytes of noise with a plausible v and a low s
            signature = "0x" + rng.randbytes(32).hex() + "00" + rng.randbytes(31).hex() + "1b"
        payload = {"authorization": auth, "signature": signature}
        headers.append(
            encode_payment_signature_header(template.model_copy(update={"payload": payload}))
        )
    return headers


async def send_all(
    http: httpx.AsyncClient, url: str, headers: list[str], spoof: bool
) -> list[httpx.Response]:
    gate = asyncio.Semaphore(CONCURRENCY)
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": message_send_params("x")}

    async def one(n: int, header: str) -> httpx.Response:
        extra = {"PAYMENT-SIGNATURE": header}
        if spoof and n % 2:
            extra["X-Forwarded-For"] = f"203.0.113.{n % 250}"
        async with gate:
            return await http.post(url + "/", json=body, headers=extra)

    return await asyncio.gather(*(one(n, h) for n, h in enumerate(headers)))


def rows(db: str, table: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute(f"SELECT * FROM {table}").fetchall()


async def test_forged_payments_cost_nothing_and_real_payers_still_pay(
    server: ServerProcess, devnet: Devnet, tmp_path
):
    victim = await devnet.new_payer(10 * AMOUNT)
    payer = await devnet.new_payer(10 * AMOUNT)
    attacker = Account.create()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with (
        httpx.AsyncClient(timeout=60, limits=limits) as http,
        PayingClient(server.url, victim, http) as victim_client,
        PayingClient(server.url, attacker, http) as attacker_client,
    ):
        required = await victim_client.payment_required()  # an unpaid call: draws nothing
        template = await victim_client.sign(required)
        # The attacker's own signature over the victim's authorization terms.
        wrong = (await attacker_client.sign(required)).payload["signature"]
        headers = forgeries(template, wrong, FORGED)
        verify_before, settle_before = devnet.stats.verify, devnet.stats.settle
        started = time.monotonic()

        first = await send_all(http, server.url, headers[: DEFAULTS.client_burst], spoof=False)

        other_address = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with (
            httpx.AsyncClient(transport=other_address, timeout=60) as other_http,
            PayingClient(server.url, payer, other_http) as honest,
        ):
            rest, paid = await asyncio.gather(
                send_all(http, server.url, headers[DEFAULTS.client_burst :], spoof=True),
                honest.send_text("a real payment, meanwhile"),
            )
        elapsed = time.monotonic() - started
        scrape = {"Authorization": f"Bearer {METRICS_TOKEN}"}
        metrics = (await http.get(server.url + "/metrics", headers=scrape)).text

    # Until the budget is spent: 402, the signature named as the reason.
    assert [r.status_code for r in first] == [402] * DEFAULTS.client_burst
    assert {r.json()["error"] for r in first} == {INVALID_SIGNATURE}
    # Then 429 with Retry-After; a 402 slips in only for a token refilled meanwhile.
    refilled = math.floor(elapsed * DEFAULTS.client_per_minute / 60) + 1
    statuses = [r.status_code for r in rest]
    assert set(statuses) <= {402, 429}
    assert statuses.count(402) <= refilled, (statuses.count(402), elapsed)
    limited = [r for r in rest if r.status_code == 429]
    assert len(limited) >= len(rest) - refilled
    longest_wait = math.ceil(60 / DEFAULTS.client_per_minute)
    for response in limited:
        retry_after = int(response.headers["Retry-After"])
        assert 1 <= retry_after <= longest_wait
        error = response.json()["error"]
        assert error["code"] == -32011
        assert error["data"] == {"retryAfterSeconds": retry_after, "scope": "client"}
        assert "too many refused payments" in error["message"]
    assert f'bindu_paywall_rate_limited_total{{scope="client"}} {float(len(limited))}' in metrics

    # The honest payer, from another address, was served in the middle of it.
    task = paid.response.json()["result"]
    assert task["status"]["state"] == "completed"
    assert task["metadata"]["x402.payment.status"] == "payment-completed"
    [log] = await devnet.transfer_logs(payer.address, devnet.info.pay_to)
    assert log["value"] == AMOUNT

    # Not one forged payment reached the facilitator or the database.
    assert devnet.stats.verify - verify_before == 1
    assert devnet.stats.settle - settle_before == 1
    db = str(tmp_path / "bindu.db")
    payments = rows(db, "payments")
    assert len(payments) == 1
    assert payer.address.lower() in payments[0]
    assert len(rows(db, "tasks")) == 1
    assert await devnet.transfer_logs(victim.address, devnet.info.pay_to) == []
    assert server.proc is not None and server.proc.poll() is None
    assert "Traceback" not in server.log()
