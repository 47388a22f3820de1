"""Real signed payments for reconciler tests, and the records a server would have written."""

from __future__ import annotations

from datetime import datetime, timedelta

from eth_account.signers.local import LocalAccount
from x402.http import FacilitatorConfig, HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements, SettleResponse

from bindu.a2a import Message, Task, TaskState, TaskStatus, TextPart, utcnow
from bindu.devnet import Devnet, PayingClient
from bindu.payments.paywall import new_record
from bindu.payments.records import META_STATUS, PaymentRecord, PaymentStatus, PaymentUpdate
from bindu.storage.base import Storage

AMOUNT = 10_000


def requirements_for(devnet: Devnet, *, max_timeout: int = 300) -> PaymentRequirements:
    info = devnet.info
    return PaymentRequirements(
        scheme="exact",
        network=info.network,
        asset=info.token_address,
        amount=str(AMOUNT),
        pay_to=info.pay_to,
        max_timeout_seconds=max_timeout,
        extra={"name": info.token_name, "version": info.token_version},
    )


async def sign(
    devnet: Devnet, payer: LocalAccount, requirements: PaymentRequirements
) -> PaymentPayload:
    async with PayingClient("http://127.0.0.1:9", payer) as client:
        return await client.sign(PaymentRequired(x402_version=2, accepts=[requirements]))


async def settle_directly(
    devnet: Devnet, payload: PaymentPayload, requirements: PaymentRequirements
) -> SettleResponse:
    client = HTTPFacilitatorClient(FacilitatorConfig(url=devnet.info.facilitator_url, timeout=30))
    try:
        return await client.settle(payload, requirements)
    finally:
        await client.aclose()


async def store_failed_payment(
    storage: Storage,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    *,
    now: datetime | None = None,
    settle_tx: str | None = None,
) -> PaymentRecord:
    """What the worker leaves behind when /settle's answer is lost: task failed,
    payment-failed, due now."""
    now = now or utcnow()
    task = Task(
        status=TaskStatus(state=TaskState.FAILED),
        history=[Message(role="user", parts=[TextPart(text="paid work")])],
        metadata={META_STATUS: PaymentStatus.FAILED.value},
    )
    earlier = now - timedelta(seconds=1)
    record = new_record(payload, requirements, task.id, earlier)
    assert await storage.claim_payment(record)
    await walk(storage, record.id, [PaymentStatus.VERIFIED, PaymentStatus.SETTLING], earlier)
    stored = await storage.transition_payment(
        record.id,
        {PaymentStatus.SETTLING},
        PaymentUpdate(
            status=PaymentStatus.FAILED,
            error="settle_timeout",
            settle_tx=settle_tx,
            next_check_at=earlier,
            answer={"source": "settle", "at": earlier.isoformat(), "answered": True},
        ),
        now=earlier,
        task=task,
    )
    assert stored is not None
    return stored


async def walk(
    storage: Storage, payment_id: str, statuses: list[PaymentStatus], now: datetime
) -> PaymentRecord:
    """Move a record along the lifecycle's edges, one legal step at a time."""
    current = await storage.get_payment(payment_id)
    assert current is not None
    for status in statuses:
        moved = await storage.transition_payment(
            payment_id, {current.status}, PaymentUpdate(status=status), now=now
        )
        assert moved is not None, (current.status, status)
        current = moved
    return current


async def store_settled_payment(
    storage: Storage,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    settle_tx: str,
    *,
    now: datetime | None = None,
    text: str = "paid work",
) -> PaymentRecord:
    """What a worker leaves behind when its process dies after a successful settle, while
    the agent runs: task working, payment-settled with its receipt, due now."""
    now = now or utcnow()
    task = Task(
        status=TaskStatus(state=TaskState.WORKING),
        history=[Message(role="user", parts=[TextPart(text=text)])],
        metadata={META_STATUS: PaymentStatus.COMPLETED.value},
    )
    earlier = now - timedelta(seconds=1)
    record = new_record(payload, requirements, task.id, earlier)
    assert await storage.claim_payment(record)
    await walk(storage, record.id, [PaymentStatus.VERIFIED, PaymentStatus.SETTLING], earlier)
    stored = await storage.transition_payment(
        record.id,
        {PaymentStatus.SETTLING},
        PaymentUpdate(
            status=PaymentStatus.SETTLED,
            settle_tx=settle_tx,
            receipt=record.receipt_for(settle_tx),
            next_check_at=earlier,
            lease_to="worker:dead",
            lease_until=earlier,
            answer={"source": "settle", "at": earlier.isoformat(), "answered": True},
        ),
        now=earlier,
        task=task,
    )
    assert stored is not None
    return stored
