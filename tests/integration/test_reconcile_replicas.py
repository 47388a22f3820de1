"""Three reconcilers on one Postgres: every payment gets exactly one verdict, one probe."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from bindu.devnet import Devnet
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.records import PaymentStatus
from bindu.reconcile.service import Outcome, Reconciler
from bindu.storage.postgres import PostgresStorage
from tests.support.payments import (
    AMOUNT,
    requirements_for,
    settle_directly,
    sign,
    store_failed_payment,
)
from tests.support.postgres import PG_URL, fresh_schema
from tests.support.proxy import proxy
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = [pytest.mark.devnet, pytest.mark.postgres]

ORPHANS = 100
EXPIRED = 100
REPLICAS = 3
AUTHORIZATION_STATE = "0xe94a0102"  # selector of authorizationState(address,bytes32)


async def test_three_replicas_200_payments_one_verdict_each(devnet: Devnet):
    payers = [await devnet.new_payer(60 * AMOUNT) for _ in range(4)]
    lasting, expiring = requirements_for(devnet), requirements_for(devnet, max_timeout=1)
    gate = asyncio.Semaphore(8)

    async def make(i: int):
        payer = payers[i % len(payers)]
        requirements = lasting if i < ORPHANS else expiring
        payload = await sign(devnet, payer, requirements)
        tx = None
        if i < ORPHANS:
            async with gate:
                settled = await settle_directly(devnet, payload, requirements)
            assert settled.success
            tx = settled.transaction
        return payload, requirements, tx

    made = await asyncio.gather(*(make(i) for i in range(ORPHANS + EXPIRED)))
    latest_expiry = max(
        int(p.payload["authorization"]["validBefore"]) for p, _, tx in made if tx is None
    )

    async def expired() -> bool:
        return await devnet.latest_block_time() > latest_expiry

    await until(expired, timeout=30, what="chain time past the short authorizations")

    async with fresh_schema() as schema, proxy(devnet.info.rpc_url) as rpc:
        stores = [PostgresStorage(PG_URL, schema=schema, pool_size=4) for _ in range(REPLICAS)]
        for store in stores:
            await store.open()
        expected_tx = {}
        for payload, requirements, tx in made:
            record = await store_failed_payment(stores[0], payload, requirements)
            expected_tx[record.id] = tx
        env = devnet.server_env(
            X402__RPC_URLS=json.dumps({devnet.info.network: rpc.url}),
            X402__RECONCILIATION__BATCH_SIZE="20",
            X402__RECONCILIATION__CONCURRENCY="8",
        )
        x402 = settings_from_env(env).x402
        replicas = [
            Reconciler(s, x402, facilitator=make_facilitator_client(x402), owner=f"replica-{i}")
            for i, s in enumerate(stores)
        ]
        verifies = devnet.stats.verify
        settles = devnet.stats.settle
        per_replica: list[list[Outcome]] = [[] for _ in replicas]
        try:
            for _ in range(5):
                passes = await asyncio.gather(*(r.run_pass() for r in replicas))
                for seen, outcomes in zip(per_replica, passes, strict=True):
                    seen.extend(outcomes)
                if not any(passes):
                    break
            records = await stores[0].list_payments(limit=1000)
        finally:
            for r in replicas:
                await r.close()
            for s in stores:
                await s.close()

    written = [o for seen in per_replica for o in seen if o.written]
    assert len(written) == ORPHANS + EXPIRED
    assert Counter(o.payment_id for o in written) == Counter(set(expected_tx))
    examined = [o.payment_id for seen in per_replica for o in seen]
    assert len(examined) == len(set(examined)) == ORPHANS + EXPIRED  # no payment worked twice
    assert sum(1 for seen in per_replica if seen) >= 2  # the work really was shared

    by_status = Counter(r.status for r in records)
    assert by_status == {PaymentStatus.ORPHANED: ORPHANS, PaymentStatus.VOID: EXPIRED}
    for record in records:
        assert record.attempts == 1
        if record.status is PaymentStatus.ORPHANED:
            assert record.receipt is not None
            assert record.receipt.transaction == expected_tx[record.id]

    # One chain probe per payment: one authorizationState call for each nonce, no more.
    probed = Counter(
        call["params"][0]["data"][-64:]
        for call in rpc.rpc_calls("eth_call")
        if call["params"][0]["data"].startswith(AUTHORIZATION_STATE)
    )
    assert len(probed) == ORPHANS + EXPIRED
    assert set(probed.values()) == {1}
    # The facilitator was not asked at all: the chain answered every question.
    assert devnet.stats.verify == verifies
    assert devnet.stats.settle == settles
