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
    stored = await storage.transition_payment(
        record.id,
        {PaymentStatus.CLAIMED},
        PaymentUpdate(
            status=PaymentStatus.FAILED,
            error="settle_timeout",
            settle_tx=settle_tx,
            next_check_at=earlier,
        ),
        now=earlier,
        task=task,
    )
    assert stored is not None
    return stored
