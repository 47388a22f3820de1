"""The reconciler service through its seams, in process: memory storage, the facilitator's
/verify answered by respx (the answers a hosted facilitator gives), passes driven by hand.
What is checked is what the service writes: status, attempts, next check, task state."""

from __future__ import annotations

import secrets
from datetime import timedelta

import httpx
import pytest
import respx
from eth_account import Account
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Authorization, ExactEIP3009Payload
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.a2a import TaskState, utcnow
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.records import META_STATUS, PaymentStatus
from bindu.reconcile.service import Reconciler
from bindu.reconcile.verdict import BACKOFF_SECONDS, Verdict
from bindu.settings import load_settings
from bindu.storage.memory import MemoryStorage
from tests.support.payments import store_failed_payment

FACILITATOR = "http://facilitator.test"
NETWORK = "eip155:31337"
ASSET = "0x" + "cd" * 20
PAY_TO = "0x" + "ab" * 20
PAYER = Account.create()
SETTINGS = load_settings(
    _env_file=None,
    x402={
        "facilitator_url": FACILITATOR,
        "pay_to": PAY_TO,
        "asset": ASSET,
        "network": NETWORK,
        "verify_timeout_seconds": 2,
        "reconciliation": {"max_attempts": 3},
    },
).x402
REQUIREMENTS = PaymentRequirements(
    scheme="exact",
    network=NETWORK,
    asset=ASSET,
    amount="10000",
    pay_to=PAY_TO,
    max_timeout_seconds=300,
    extra={"name": "USD Coin", "version": "2"},
)


def payload() -> PaymentPayload:
    now = int(utcnow().timestamp())
    auth = ExactEIP3009Authorization(
        from_address=PAYER.address,
        to=PAY_TO,
        value="10000",
        valid_after="0",
        valid_before=str(now + 300),
        nonce="0x" + secrets.token_hex(32),
    )
    digest = hash_eip3009_authorization(auth, 31337, ASSET, "USD Coin", "2")
    signature = "0x" + PAYER.unsafe_sign_hash(digest).signature.hex().removeprefix("0x")
    inner = ExactEIP3009Payload(authorization=auth, signature=signature).to_dict()
    return PaymentPayload(x402_version=2, accepted=REQUIREMENTS, payload=inner)


@pytest.fixture
async def world():
    storage = MemoryStorage()
    await storage.open()
    with respx.mock(assert_all_called=False) as mock:
        verify = mock.post(f"{FACILITATOR}/verify")
        settle = mock.post(f"{FACILITATOR}/settle")
        client = make_facilitator_client(SETTINGS)
        reconciler = Reconciler(storage, SETTINGS, facilitator=client, owner="test")
        yield reconciler, storage, verify
        assert settle.call_count == 0  # judging never moves money
        await reconciler.close()
        await client.aclose()
    await storage.close()


async def test_an_unused_authorization_waits_on_the_backoff(world):
    reconciler, storage, verify = world
    verify.respond(200, json={"isValid": True})
    record = await store_failed_payment(storage, payload(), REQUIREMENTS)
    now = utcnow()
    [outcome] = await reconciler.run_pass(now)
    assert outcome.decision.verdict is Verdict.RETRY and outcome.written
    stored = await storage.get_payment(record.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (PaymentStatus.FAILED, 1)
    assert stored.next_check_at == now + timedelta(seconds=BACKOFF_SECONDS[0])
    assert verify.call_count == 1
    # Not due again before its next check: the next pass leaves it alone.
    assert await reconciler.run_pass(now + timedelta(seconds=1)) == []


async def test_a_facilitator_down_counts_attempts_until_unresolved(world):
    reconciler, storage, verify = world
    verify.side_effect = httpx.ConnectError("refused")
    record = await store_failed_payment(storage, payload(), REQUIREMENTS)
    now = utcnow()
    verdicts = []
    for _ in range(3):
        [outcome] = await reconciler.run_pass(now)
        verdicts.append(outcome.decision.verdict)
        stored = await storage.get_payment(record.id)
        assert stored is not None
        now = stored.next_check_at or now
    assert verdicts == [Verdict.RETRY, Verdict.RETRY, Verdict.UNRESOLVED]
    assert (stored.status, stored.attempts) == (PaymentStatus.UNRESOLVED, 3)
    task = await storage.get_task(record.task_id)
    assert task is not None and task.metadata[META_STATUS] == PaymentStatus.UNRESOLVED.value


async def test_a_never_executable_authorization_is_void(world):
    reconciler, storage, verify = world
    verify.respond(
        200, json={"isValid": False, "invalidReason": "invalid_exact_evm_payload_signature"}
    )
    record = await store_failed_payment(storage, payload(), REQUIREMENTS)
    [outcome] = await reconciler.run_pass(utcnow())
    assert outcome.decision.verdict is Verdict.VOID and outcome.written
    stored = await storage.get_payment(record.id)
    assert stored is not None and stored.status is PaymentStatus.VOID
    task = await storage.get_task(record.task_id)
    assert task is not None
    assert task.status.state is TaskState.FAILED
    assert task.metadata[META_STATUS] == PaymentStatus.VOID.value


async def test_a_consumed_nonce_without_proof_is_unresolved_at_once(world):
    # Facilitator-only: used or canceled cannot be told apart (DESIGN §7), never orphaned.
    reconciler, storage, verify = world
    verify.respond(
        400, json={"isValid": False, "invalidReason": "invalid_exact_evm_nonce_already_used"}
    )
    record = await store_failed_payment(storage, payload(), REQUIREMENTS)
    [outcome] = await reconciler.run_pass(utcnow())
    assert outcome.decision.verdict is Verdict.UNRESOLVED
    assert "X402__RPC_URLS" in outcome.decision.reason
    stored = await storage.get_payment(record.id)
    assert stored is not None
    assert (stored.status, stored.attempts) == (PaymentStatus.UNRESOLVED, 1)
