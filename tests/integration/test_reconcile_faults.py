"""The reconciler against broken sources, corrupt records, and payments that never resolve.

Passes are driven by hand (``run_pass``) so each step is observable; the sources are the
real devnet behind a fault-injecting proxy.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from bindu.a2a import utcnow
from bindu.devnet import Devnet
from bindu.metrics import RECONCILE_ERRORS
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.records import PaymentStatus
from bindu.reconcile.probes import ChainProbe
from bindu.reconcile.service import Reconciler
from bindu.settings import Settings
from bindu.storage.base import Storage
from bindu.storage.sqlite import SqliteStorage
from tests.support.payments import (
    AMOUNT,
    requirements_for,
    settle_directly,
    sign,
    store_failed_payment,
)
from tests.support.proxy import Proxy, proxy
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet


@pytest.fixture
async def storage(tmp_path) -> AsyncIterator[Storage]:
    store = SqliteStorage(str(tmp_path / "bindu.db"))
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def rpc_proxy(devnet: Devnet) -> AsyncIterator[Proxy]:
    async with proxy(devnet.info.rpc_url) as p:
        yield p


@pytest.fixture
async def facilitator_proxy(devnet: Devnet) -> AsyncIterator[Proxy]:
    async with proxy(devnet.info.facilitator_url) as p:
        yield p


def settings_for(devnet: Devnet, *, rpc: str | None, facilitator: str, **extra: str) -> Settings:
    env = devnet.server_env(
        X402__FACILITATOR_URL=facilitator,
        X402__RPC_URLS=json.dumps({devnet.info.network: rpc}) if rpc else "{}",
        X402__VERIFY_TIMEOUT_SECONDS="2",
        X402__RPC_TIMEOUT_SECONDS="2",
        **extra,
    )
    return settings_from_env(env)


async def orphan(devnet: Devnet, storage: Storage):
    """A payment that settled on chain while the server recorded a failure."""
    payer = await devnet.new_payer(10 * AMOUNT)
    requirements = requirements_for(devnet)
    payload = await sign(devnet, payer, requirements)
    settled = await settle_directly(devnet, payload, requirements)
    assert settled.success
    return await store_failed_payment(storage, payload, requirements), settled.transaction


def reconciler_for(storage: Storage, settings: Settings) -> Reconciler:
    return Reconciler(storage, settings.x402, facilitator=make_facilitator_client(settings.x402))


def errors(source: str) -> float:
    return RECONCILE_ERRORS.labels(source)._value.get()


@pytest.mark.parametrize("mode", ["down", "error_500", "malformed", "slow"])
async def test_facilitator_trouble_waits_then_resolves(devnet, storage, facilitator_proxy, mode):
    record, _ = await orphan(devnet, storage)
    settings = settings_for(devnet, rpc=None, facilitator=facilitator_proxy.url)
    reconciler = reconciler_for(storage, settings)
    facilitator_proxy.mode = mode
    facilitator_proxy.slow_seconds = 5  # past the 2 s verify timeout
    errors_before = errors("facilitator")
    try:
        [outcome] = await reconciler.run_pass()
        assert outcome.decision.verdict.value == "retry"
        assert "facilitator unavailable" in outcome.decision.reason
        assert errors("facilitator") == errors_before + 1
        waiting = await storage.get_payment(record.id)
        assert waiting is not None and waiting.status is PaymentStatus.FAILED
        assert waiting.attempts == 1 and waiting.next_check_at is not None
        facilitator_proxy.mode = "pass"
        [outcome] = await reconciler.run_pass(now=waiting.next_check_at)
    finally:
        await reconciler.close()
    # Facilitator-only, the answer lost: a consumed nonce proves nothing (the payer may
    # have canceled), so the verdict waits for the chain, never guessing orphaned.
    assert outcome.decision.verdict.value == "unresolved"
    assert "X402__RPC_URLS" in outcome.decision.reason
    done = await storage.get_payment(record.id)
    assert done is not None and done.status is PaymentStatus.UNRESOLVED


@pytest.mark.parametrize("mode", ["down", "malformed", "slow"])
async def test_rpc_trouble_waits_then_resolves(devnet, storage, rpc_proxy, mode):
    record, tx = await orphan(devnet, storage)
    settings = settings_for(devnet, rpc=rpc_proxy.url, facilitator=devnet.info.facilitator_url)
    reconciler = reconciler_for(storage, settings)
    rpc_proxy.mode = mode
    rpc_proxy.slow_seconds = 5
    errors_before = errors("chain")
    try:
        [outcome] = await reconciler.run_pass()
        assert outcome.decision.verdict.value == "retry"
        assert errors("chain") == errors_before + 1
        rpc_proxy.mode = "pass"
        waiting = await storage.get_payment(record.id)
        assert waiting is not None
        [outcome] = await reconciler.run_pass(now=waiting.next_check_at)
    finally:
        await reconciler.close()
    assert outcome.decision.verdict.value == "orphaned"
    assert outcome.decision.receipt is not None and outcome.decision.receipt.transaction == tx


async def test_the_service_loop_survives_a_dead_source(devnet, storage, facilitator_proxy):
    record, _ = await orphan(devnet, storage)
    settings = settings_for(
        devnet,
        rpc=None,
        facilitator=facilitator_proxy.url,
        X402__RECONCILIATION__INTERVAL_SECONDS="0.2",
    )
    reconciler = reconciler_for(storage, settings)
    # Backoff would wait 5 s; let every pass retry at once so the loop is exercised.
    reconciler.rules = type(reconciler.rules)(backoff=(0.0,), max_attempts=1000)
    facilitator_proxy.mode = "down"
    loop = asyncio.create_task(reconciler.run())
    try:

        async def several_failures() -> bool:
            current = await storage.get_payment(record.id)
            return current is not None and current.attempts >= 3

        await until(several_failures, timeout=20, what="three failed probes")
        assert not loop.done()
        facilitator_proxy.mode = "pass"

        async def resolved() -> bool:
            current = await storage.get_payment(record.id)
            return current is not None and current.status is PaymentStatus.UNRESOLVED

        await until(resolved, timeout=20, what="verdict once the facilitator is back")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await reconciler.close()


async def test_corrupt_record_is_flagged_and_the_rest_go_on(devnet, storage, tmp_path):
    good, tx = await orphan(devnet, storage)
    bad, _ = await orphan(devnet, storage)
    with sqlite3.connect(tmp_path / "bindu.db") as db:
        db.execute("UPDATE payments SET payload = '{truncated' WHERE id = ?", (bad.id,))
    settings = settings_for(
        devnet, rpc=devnet.info.rpc_url, facilitator=devnet.info.facilitator_url
    )
    reconciler = reconciler_for(storage, settings)
    try:
        outcomes = {o.payment_id: o for o in await reconciler.run_pass()}
    finally:
        await reconciler.close()
    assert outcomes[good.id].decision.verdict.value == "orphaned"
    assert outcomes[bad.id].decision.verdict.value == "unresolved"
    flagged = await storage.get_payment(bad.id)
    assert flagged is not None and flagged.status is PaymentStatus.UNRESOLVED
    assert flagged.error is not None and "corrupt" in flagged.error
    task = await storage.get_task(bad.task_id)
    assert task is not None
    assert task.metadata["x402.payment.status"] == "payment-unresolved"
    fine = await storage.get_payment(good.id)
    assert fine is not None and fine.receipt is not None and fine.receipt.transaction == tx


@pytest.mark.parametrize("source", ["facilitator", "chain"])
async def test_never_resolving_payment_costs_at_most_max_attempts_probes(
    devnet, storage, facilitator_proxy, rpc_proxy, source
):
    payer = await devnet.new_payer(10 * AMOUNT)
    requirements = requirements_for(devnet, max_timeout=3600)
    payload = await sign(devnet, payer, requirements)
    record = await store_failed_payment(storage, payload, requirements)
    settings = settings_for(
        devnet,
        rpc=rpc_proxy.url if source == "chain" else None,
        facilitator=facilitator_proxy.url,
        X402__RECONCILIATION__MAX_ATTEMPTS="4",
    )
    reconciler = reconciler_for(storage, settings)
    now = utcnow()
    passes = 0
    try:
        # Simulated time: each pass runs when the record is next due; plus extra passes
        # in between that must not touch it.
        while True:
            passes += 1
            outcomes = await reconciler.run_pass(now=now)
            current = await storage.get_payment(record.id)
            assert current is not None
            if current.status is not PaymentStatus.FAILED:
                break
            assert outcomes and current.next_check_at is not None
            assert await reconciler.run_pass(now=current.next_check_at - timedelta(seconds=1)) == []
            now = current.next_check_at
            assert passes < 50
    finally:
        await reconciler.close()
    assert current.status is PaymentStatus.UNRESOLVED
    assert current.attempts == 4
    if source == "facilitator":
        assert facilitator_proxy.paths("/verify") == 4
        assert facilitator_proxy.paths("/settle") == 0
    else:
        assert len(rpc_proxy.rpc_calls("eth_call")) == 4
        assert facilitator_proxy.paths("/verify") == 0


async def test_one_unreadable_task_does_not_sink_the_batch(devnet, storage, tmp_path):
    good, _ = await orphan(devnet, storage)
    bad, _ = await orphan(devnet, storage)
    with sqlite3.connect(tmp_path / "bindu.db") as db:
        db.execute("UPDATE tasks SET data = '{oops' WHERE id = ?", (bad.task_id,))
    settings = settings_for(
        devnet, rpc=devnet.info.rpc_url, facilitator=devnet.info.facilitator_url
    )
    reconciler = reconciler_for(storage, settings)
    errors_before = errors("payment")
    try:
        outcomes = {o.payment_id: o for o in await reconciler.run_pass()}
    finally:
        await reconciler.close()
    assert outcomes[good.id].written and outcomes[good.id].decision.verdict.value == "orphaned"
    assert not outcomes[bad.id].written
    assert errors("payment") == errors_before + 1
    still = await storage.get_payment(bad.id)
    assert still is not None and still.status is PaymentStatus.FAILED  # nothing lost


async def test_chain_probe_finds_an_old_transfer_in_windows(devnet, storage, rpc_proxy):
    _, tx = await orphan(devnet, storage)  # no hash known: the log must be searched
    # Deep in history now (interval 0: chain time must not jump for the other tests).
    await devnet.rpc.call("anvil_mine", hex(60), "0x0")
    settings = settings_for(devnet, rpc=rpc_proxy.url, facilitator=devnet.info.facilitator_url)
    chain = ChainProbe(settings.x402.rpc_urls, timeout=10, log_window=50)
    reconciler = Reconciler(
        storage,
        settings.x402,
        facilitator=make_facilitator_client(settings.x402),
        chain=chain,
    )
    try:
        [outcome] = await reconciler.run_pass()
    finally:
        await reconciler.close()
    assert outcome.decision.verdict.value == "orphaned"
    assert outcome.decision.receipt is not None and outcome.decision.receipt.transaction == tx
    windows = [call["params"][0] for call in rpc_proxy.rpc_calls("eth_getLogs")]
    assert len(windows) == 2
    assert all(int(w["toBlock"], 16) - int(w["fromBlock"], 16) < 50 for w in windows)
