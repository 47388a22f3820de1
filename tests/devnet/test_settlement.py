"""DESIGN.md §2, measured again: what the SDK facilitator answers, and what the chain shows.

Every test talks to the real facilitator over HTTP through the SDK's HTTPFacilitatorClient,
with payments signed by the SDK client, on the real anvil chain.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from x402.http import FacilitatorConfig, HTTPFacilitatorClient

from tests.devnet.support import AMOUNT, nonce_of, requirements, sign, valid_before_of
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

NONCE_USED = "invalid_exact_evm_nonce_already_used"
VALID_BEFORE = "invalid_exact_evm_payload_authorization_valid_before"


async def test_verify_then_settle_moves_the_amount(devnet, facilitator, payer, pay_to):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    before = await devnet.balance_of(payer.address)

    verified = await facilitator.verify(payment, offer)
    assert verified.is_valid, verified
    assert verified.payer == payer.address

    settled = await facilitator.settle(payment, offer)
    assert settled.success, settled
    assert settled.network == devnet.info.network

    assert await devnet.balance_of(payer.address) == before - AMOUNT
    assert await devnet.balance_of(pay_to) == AMOUNT
    [transfer] = await devnet.transfer_logs(payer.address, pay_to)
    assert transfer["value"] == AMOUNT
    assert transfer["transaction_hash"] == settled.transaction
    assert await devnet.authorization_state(payer.address, nonce_of(payment))
    [used] = await devnet.authorization_logs(payer.address, nonce_of(payment))
    assert used["event"] == "used" and used["transaction_hash"] == settled.transaction


async def test_pending_settle_lands_and_is_resumed_without_a_new_broadcast(
    devnet, facilitator, payer, pay_to
):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    fac = devnet.info.facilitator_address
    sent_before = await devnet.tx_count(fac)

    # Row 1: the chain does not mine within the facilitator's receipt wait.
    await devnet.hold_mining()
    try:
        pending = await facilitator.settle(payment, offer)
        assert not pending.success
        assert pending.error_reason == "settlement_pending"
        assert pending.transaction.startswith("0x") and len(pending.transaction) == 66
        assert await devnet.tx_count(fac) == sent_before + 1
        assert await devnet.transfer_logs(payer.address, pay_to) == []
    finally:
        await devnet.release_mining()

    # The transfer lands once blocks come again.
    [transfer] = await until(
        lambda: devnet.transfer_logs(payer.address, pay_to), timeout=10, what="transfer"
    )
    assert transfer["transaction_hash"] == pending.transaction
    assert await devnet.authorization_state(payer.address, nonce_of(payment))

    # Row 2: same payload, same facilitator process, inside the pending-store TTL.
    resumed = await facilitator.settle(payment, offer)
    assert resumed.success, resumed
    assert resumed.transaction == pending.transaction
    assert await devnet.tx_count(fac) == sent_before + 1

    # Row 4: /verify after consumption.
    verified = await facilitator.verify(payment, offer)
    assert not verified.is_valid
    assert verified.invalid_reason == NONCE_USED

    # Row 3: settle again once the store entry is gone: a NEW, reverted broadcast.
    duplicate = await facilitator.settle(payment, offer)
    assert not duplicate.success
    assert duplicate.error_reason == "transaction_failed"
    assert duplicate.transaction not in ("", pending.transaction)
    assert await devnet.tx_count(fac) == sent_before + 2
    assert await devnet.balance_of(pay_to) == AMOUNT  # still one payment
    assert pending.transaction in devnet.stats.settle_transactions


async def test_canceled_authorization_is_refused(devnet, facilitator, payer, pay_to):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    nonce = nonce_of(payment)
    assert not await devnet.authorization_state(payer.address, nonce)

    cancel_tx = await devnet.cancel_authorization(payer, nonce)

    [canceled] = await devnet.authorization_logs(payer.address, nonce)
    assert canceled["event"] == "canceled" and canceled["transaction_hash"] == cancel_tx
    assert await devnet.authorization_state(payer.address, nonce)  # used OR canceled
    verified = await facilitator.verify(payment, offer)
    assert not verified.is_valid
    assert verified.invalid_reason == NONCE_USED
    # /settle does not simulate first (the SDK's default): it broadcasts a transfer that
    # reverts, and answers transaction_failed with that hash. Neither answer tells a
    # canceled authorization from a used one; only the chain's events can (DESIGN §7).
    sent = await devnet.tx_count(devnet.info.facilitator_address)
    settled = await facilitator.settle(payment, offer)
    assert not settled.success
    assert settled.error_reason == "transaction_failed" and settled.transaction
    assert await devnet.tx_count(devnet.info.facilitator_address) == sent + 1
    reverted = await devnet.receipt(settled.transaction)
    assert int(reverted["status"], 16) == 0
    assert await devnet.transfer_logs(payer.address, pay_to) == []


async def test_expired_authorization_says_nothing_about_use(devnet, facilitator, payer, pay_to):
    # validBefore = now + 1 s: the facilitator already treats it as expired (it wants 6 s left).
    offer = requirements(devnet, pay_to, max_timeout_seconds=1)
    payment = await sign(payer, offer)

    verified = await facilitator.verify(payment, offer)
    assert not verified.is_valid and verified.invalid_reason == VALID_BEFORE
    settled = await facilitator.settle(payment, offer)
    assert not settled.success and settled.error_reason == VALID_BEFORE

    # The chain proves it void: unused, and the chain's clock has passed validBefore.
    valid_before = valid_before_of(payment)

    async def chain_past_valid_before() -> bool:
        return await devnet.latest_block_time() > valid_before

    await until(chain_past_valid_before, timeout=10, what="chain time past validBefore")
    assert not await devnet.authorization_state(payer.address, nonce_of(payment))


async def test_settle_delay_answers_late_with_the_transfer_already_on_chain(
    devnet, faults_reset, payer, pay_to
):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    faults_reset.settle_delay_seconds = 2.0

    # A server with a short settle timeout gives up; the chain holds the transfer anyway.
    impatient = HTTPFacilitatorClient(
        FacilitatorConfig(url=devnet.info.facilitator_url, timeout=0.5)
    )
    try:
        with pytest.raises(httpx.TimeoutException):
            await impatient.settle(payment, offer)
    finally:
        await impatient.aclose()
    [transfer] = await until(
        lambda: devnet.transfer_logs(payer.address, pay_to), timeout=10, what="transfer"
    )
    assert await devnet.balance_of(pay_to) == AMOUNT
    assert transfer["transaction_hash"] in devnet.stats.settle_transactions

    # A patient caller gets the real answer, late.
    payment2 = await sign(payer, offer)
    patient = HTTPFacilitatorClient(FacilitatorConfig(url=devnet.info.facilitator_url, timeout=30))
    try:
        started = time.monotonic()
        task = asyncio.create_task(patient.settle(payment2, offer))
        await until(
            lambda: _count(devnet.transfer_logs(payer.address, pay_to), 2), timeout=10, what="2nd"
        )
        assert not task.done()  # on chain, still unanswered
        settled = await task
        assert settled.success
        assert time.monotonic() - started >= 2.0
    finally:
        await patient.aclose()


async def test_settle_fail_before_broadcast_touches_nothing(
    devnet, facilitator, faults_reset, payer, pay_to
):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    fac = devnet.info.facilitator_address
    sent_before = await devnet.tx_count(fac)
    balance_before = await devnet.balance_of(payer.address)
    faults_reset.settle_fail_before_broadcast = True

    with pytest.raises(ValueError, match=r"Facilitator settle failed \(500\)"):
        await facilitator.settle(payment, offer)

    assert await devnet.tx_count(fac) == sent_before
    assert await devnet.balance_of(payer.address) == balance_before
    assert await devnet.balance_of(pay_to) == 0
    assert not await devnet.authorization_state(payer.address, nonce_of(payment))


async def test_pending_as_http_500_hides_the_hash_in_the_sdk_error(
    devnet, facilitator, faults_reset, payer, pay_to
):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    faults_reset.pending_as_http_500 = True

    await devnet.hold_mining()
    try:
        with pytest.raises(ValueError, match=r"\(500\).*settlement_pending") as raised:
            await facilitator.settle(payment, offer)
    finally:
        await devnet.release_mining()

    # The hash is only inside the SDK's error text; the stats saw it too.
    tx_hash = devnet.stats.settle_transactions[-1]
    assert tx_hash in str(raised.value)
    [transfer] = await until(
        lambda: devnet.transfer_logs(payer.address, pay_to), timeout=10, what="transfer"
    )
    assert transfer["transaction_hash"] == tx_hash


async def _count(logs, n: int) -> bool:
    return len(await logs) >= n
