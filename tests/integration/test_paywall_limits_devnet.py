"""Refusal budgets against the real facilitator: a payer it refuses, smart-wallet signatures
it must judge on chain, and X-Forwarded-For believed only from a listed proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from eth_account import Account
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentPayload

from bindu.devnet import Devnet, PayingClient
from bindu.devnet.client import message_send_params
from tests.support import agents
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
# A token per 100 minutes: no bucket refills while a test runs, however slow the machine.
NO_REFILL = "0.01"


@asynccontextmanager
async def server(devnet: Devnet, tmp_path, **limits: str) -> AsyncIterator[str]:
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__RECONCILIATION__ENABLED="false",
        **{f"X402__RATE_LIMIT__{name.upper()}": value for name, value in limits.items()},
    )
    async with inprocess_server(settings_from_env(env), agents.counting) as url:
        yield url


@asynccontextmanager
async def from_address(address: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(transport=transport, timeout=60) as http:
        yield http


async def pay(url: str, http: httpx.AsyncClient, payment: PaymentPayload, **headers: str):
    body = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": message_send_params("x")}
    headers["PAYMENT-SIGNATURE"] = encode_payment_signature_header(payment)
    return await http.post(url + "/", json=body, headers=headers)


async def sign(url: str, account) -> PaymentPayload:
    async with PayingClient(url, account) as client:
        return await client.sign(await client.payment_required())


def with_signature(payment: PaymentPayload, signature: str) -> PaymentPayload:
    return payment.model_copy(update={"payload": {**payment.payload, "signature": signature}})


async def test_a_payer_the_facilitator_refuses_is_limited_from_every_address(devnet, tmp_path):
    broke = await devnet.new_payer(AMOUNT - 1)
    async with server(devnet, tmp_path, payer_burst="2", payer_per_minute=NO_REFILL) as url:
        verifies = devnet.stats.verify
        for n in (3, 4):
            async with from_address(f"127.0.0.{n}") as http:
                reply = await pay(url, http, await sign(url, broke))
            assert reply.status_code == 402
            assert "insufficient_balance" in reply.json()["error"]
        assert devnet.stats.verify == verifies + 2
        async with from_address("127.0.0.5") as http:
            reply = await pay(url, http, await sign(url, broke))
        assert reply.status_code == 429
        assert reply.json()["error"]["data"]["scope"] == "payer"
        assert int(reply.headers["Retry-After"]) >= 1
        assert devnet.stats.verify == verifies + 2
        # The addresses it came from were charged once each, not locked: others pay there.
        payer = await devnet.new_payer(10 * AMOUNT)
        async with from_address("127.0.0.3") as http, PayingClient(url, payer, http) as client:
            paid = await client.send_text("funded")
        assert paid.response.json()["result"]["status"]["state"] == "completed"


async def test_smart_wallet_signatures_reach_the_facilitator_rationed(devnet, tmp_path):
    payer = await devnet.new_payer(10 * AMOUNT)
    async with server(
        devnet, tmp_path, smart_wallet_burst="2", smart_wallet_per_minute=NO_REFILL
    ) as url:
        verifies = devnet.stats.verify
        for n in (6, 7):
            # 64 bytes: an ERC-1271 wallet's signature for all a local check can tell.
            payment = with_signature(await sign(url, payer), "0x" + "12" * 64)
            async with from_address(f"127.0.0.{n}") as http:
                reply = await pay(url, http, payment)
            assert reply.status_code == 402
            assert "smart_wallet" in reply.json()["error"]  # the facilitator's own verdict
        assert devnet.stats.verify == verifies + 2
        payment = with_signature(await sign(url, payer), "0x" + "12" * 64)
        async with from_address("127.0.0.8") as http:
            reply = await pay(url, http, payment)
        assert reply.status_code == 429
        assert reply.json()["error"]["data"]["scope"] == "smart-wallet"
        assert devnet.stats.verify == verifies + 2
        # Ordinary signatures do not wait on that budget.
        async with PayingClient(url, payer) as client:
            paid = await client.send_text("plain ECDSA")
        assert paid.response.json()["result"]["status"]["state"] == "completed"


async def test_forwarded_for_is_believed_only_from_a_listed_proxy(devnet, tmp_path):
    victim = Account.create()
    limits = {"client_burst": "1", "client_per_minute": NO_REFILL, "trusted_proxies": "127.0.0.1"}
    async with server(devnet, tmp_path, **limits) as url:
        real = await sign(url, victim)
        forged = with_signature(real, (await sign(url, Account.create())).payload["signature"])

        async def status(http: httpx.AsyncClient, forwarded: str) -> int:
            reply = await pay(url, http, forged, **{"X-Forwarded-For": forwarded})
            return reply.status_code

        async with httpx.AsyncClient(timeout=60) as proxy:  # from 127.0.0.1: trusted
            assert await status(proxy, "198.51.100.1") == 402
            assert await status(proxy, "198.51.100.1") == 429
            assert await status(proxy, "198.51.100.2") == 402
            # The client's own claim left of the proxy's entry is not believed.
            assert await status(proxy, "198.51.100.3, 198.51.100.2") == 429
        async with from_address("127.0.0.9") as direct:  # not a listed proxy
            assert await status(direct, "198.51.100.4") == 402
            assert await status(direct, "198.51.100.5") == 429
