"""The paywall's order of checks and refusal budgets, on a clock the test turns.

Forged payments never reach a facilitator, so none stands in for one here; respx answers
only /supported and the verify answers of smart wallets and funded payers (the devnet
shows the same against the real facilitator: tests/acceptance/test_forged_payments.py).
"""

from __future__ import annotations

import httpx
import pytest
import respx
from eth_account import Account
from x402.http.utils import encode_payment_signature_header
from x402.schemas import PaymentPayload, PaymentRequired

from bindu.a2a import utcnow
from bindu.devnet import PayingClient
from bindu.payments.facilitator import make_facilitator_client
from bindu.payments.paywall import REPLAYED, Admission, Paywall, Refusal
from bindu.settings import load_settings
from bindu.storage.memory import MemoryStorage

FACILITATOR = "http://facilitator.test"
ASSET = "0x" + "11" * 20
PAY_TO = "0x" + "22" * 20
SUPPORTED = {"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:31337"}]}
VALID = {"isValid": True}
BROKE = {"isValid": False, "invalidReason": "invalid_exact_evm_insufficient_balance"}


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limits() -> dict[str, object]:
    return {
        "client_burst": 3,
        "client_per_minute": 6,  # a token per 10 s
        "payer_burst": 2,
        "payer_per_minute": 6,
        "smart_wallet_burst": 2,
        "smart_wallet_per_minute": 6,
    }


@pytest.fixture
async def paywall(clock, limits):
    settings = load_settings(
        _env_file=None,
        x402={
            "facilitator_url": FACILITATOR,
            "pay_to": PAY_TO,
            "asset": ASSET,
            "network": "eip155:31337",
            "rate_limit": limits,
        },
    )
    storage = MemoryStorage()
    await storage.open()
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{FACILITATOR}/supported").respond(200, json=SUPPORTED)
        verify = mock.post(f"{FACILITATOR}/verify")
        verify.respond(200, json=VALID)
        wall = Paywall(
            settings.x402, storage, make_facilitator_client(settings.x402), "http://s/", clock=clock
        )
        assert await wall.ready()
        yield wall, verify, storage
        await wall.facilitator.aclose()
    await storage.close()


async def signed(wall: Paywall, account=None) -> PaymentPayload:
    async with PayingClient("http://server.test", account or Account.create()) as client:
        return await client.sign(PaymentRequired(x402_version=2, accepts=wall.requirements))


def header(payload: PaymentPayload) -> dict[str, str]:
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}


def with_signature(payload: PaymentPayload, signature: str) -> PaymentPayload:
    return payload.model_copy(update={"payload": {**payload.payload, "signature": signature}})


async def forged(wall: Paywall) -> dict[str, str]:
    """A well-formed payment whose signature is someone else's."""
    real = await signed(wall)
    other = await signed(wall)
    return header(with_signature(real, other.payload["signature"]))


async def admit(wall: Paywall, headers: dict[str, str], client: str = "198.51.100.1"):
    return await wall.admit(headers, "task", utcnow(), client)


async def test_a_forged_payment_costs_no_write_and_no_facilitator_call(paywall):
    wall, verify, storage = paywall
    out = await admit(wall, await forged(wall))
    assert out == Refusal(402, "payment invalid: invalid_exact_evm_payload_signature")
    assert verify.call_count == 0
    assert await storage.list_payments() == []


async def test_refusals_past_the_burst_get_429_until_a_token_refills(paywall, clock):
    wall, verify, _ = paywall
    headers = await forged(wall)
    for _ in range(3):
        assert (await admit(wall, headers)).status == 402
    limited = await admit(wall, headers)
    reason = "too many refused payments from this address"
    assert limited == Refusal(429, reason, retry_after=pytest.approx(10.0), scope="client")
    assert wall.throttled("198.51.100.1") == limited
    # Another address is judged on its own.
    assert (await admit(wall, headers, client="198.51.100.2")).status == 402
    # Half a second short of a token is still a wait.
    clock.now += 9.5
    assert await admit(wall, headers) == Refusal(
        429, reason, retry_after=pytest.approx(0.5), scope="client"
    )
    # A 429 draws nothing: after one refill there is exactly one more 402.
    clock.now += 0.5
    assert (await admit(wall, headers)).status == 402
    assert (await admit(wall, headers)).status == 429
    assert verify.call_count == 0


async def test_unpaid_calls_and_successful_payments_draw_nothing(paywall):
    wall, verify, _ = paywall
    for _ in range(5):
        assert await admit(wall, {}) == Refusal(402, "payment required")
        assert isinstance(await admit(wall, header(await signed(wall))), Admission)
    assert verify.call_count == 5
    assert len(wall.limits.clients) == 0
    assert (await admit(wall, await forged(wall))).status == 402


async def test_a_payer_refused_by_the_facilitator_is_limited_from_any_address(paywall, clock):
    wall, verify, storage = paywall
    verify.respond(200, json=BROKE)
    payer = Account.create()
    for n in range(2):
        out = await admit(wall, header(await signed(wall, payer)), client=f"198.51.100.{n}")
        assert out.status == 402 and "insufficient_balance" in out.reason
    limited = await admit(wall, header(await signed(wall, payer)), client="198.51.100.9")
    reason = "too many refused payments by this payer"
    assert limited == Refusal(429, reason, retry_after=pytest.approx(10.0), scope="payer")
    assert wall.limits.payers.wait(payer.address.lower()) == pytest.approx(10.0)
    assert verify.call_count == 2
    assert await storage.list_payments() == []  # refused claims are released
    # Half a second short of a token is still a wait.
    clock.now += 9.5
    limited = await admit(wall, header(await signed(wall, payer)), client="198.51.100.8")
    assert limited == Refusal(429, reason, retry_after=pytest.approx(0.5), scope="payer")
    # Someone else from the same addresses is not affected by that payer's budget.
    verify.respond(200, json=VALID)
    assert isinstance(await admit(wall, header(await signed(wall)), "198.51.100.0"), Admission)


async def test_replays_and_forgeries_naming_a_payer_do_not_lock_it_out(paywall):
    wall, _, _ = paywall
    victim = Account.create()
    used = header(await signed(wall, victim))
    assert isinstance(await admit(wall, used, client="203.0.113.1"), Admission)
    for n in range(4):
        assert await admit(wall, used, client=f"198.51.100.{n}") == Refusal(402, REPLAYED)
    bogus = await signed(wall, victim)
    stranger = await signed(wall)
    for n in range(4):
        headers = header(with_signature(bogus, stranger.payload["signature"]))
        assert (await admit(wall, headers, client=f"198.51.100.{n}")).status == 402
    assert wall.limits.payers.wait(victim.address.lower()) == 0
    fresh = header(await signed(wall, victim))
    assert isinstance(await admit(wall, fresh, client="203.0.113.1"), Admission)


async def test_a_smart_wallet_signature_reaches_the_facilitator_and_success_draws_nothing(
    paywall,
):
    wall, verify, _ = paywall
    payment = with_signature(await signed(wall), "0x" + "12" * 300)  # EIP-1271-sized
    out = await admit(wall, header(payment))
    assert isinstance(out, Admission) and out.record.task_id == "task"
    assert verify.call_count == 1
    assert len(wall.limits.clients) == 0
    assert wall.limits.smart_wallets is not None and len(wall.limits.smart_wallets) == 0


async def test_smart_wallet_attempts_are_rationed_server_wide(paywall, clock):
    wall, verify, _ = paywall
    verify.respond(200, json={"isValid": False, "invalidReason": "invalid_signature"})
    for n in range(2):
        payment = with_signature(await signed(wall), "0x" + "34" * 64)
        assert (await admit(wall, header(payment), client=f"198.51.100.{n}")).status == 402
    payment = with_signature(await signed(wall), "0x" + "34" * 64)
    limited = await admit(wall, header(payment), client="198.51.100.7")
    reason = "too many smart-wallet payments awaiting the facilitator"
    assert limited == Refusal(429, reason, retry_after=pytest.approx(10.0), scope="smart-wallet")
    assert verify.call_count == 2
    # Each refused attempt was charged to its client too.
    assert wall.limits.clients.wait("198.51.100.0") == 0  # 2 of 3 tokens left
    assert len(wall.limits.clients) == 2
    # Half a second short of a token is still a wait.
    clock.now += 9.5
    limited = await admit(wall, header(payment), client="198.51.100.7")
    assert limited == Refusal(429, reason, retry_after=pytest.approx(0.5), scope="smart-wallet")


async def test_an_unreachable_facilitator_gives_the_smart_wallet_budget_back(paywall):
    wall, verify, storage = paywall
    verify.side_effect = httpx.ConnectError("refused")
    payment = with_signature(await signed(wall), "0x" + "56" * 64)
    out = await admit(wall, header(payment))
    assert isinstance(out, Refusal) and out.status == 503
    assert len(wall.limits.clients) == 0
    assert wall.limits.smart_wallets is not None and len(wall.limits.smart_wallets) == 0
    assert await storage.list_payments() == []


@pytest.mark.parametrize("limits", [{"smart_wallet_burst": 0, "client_burst": 1}])
async def test_smart_wallets_can_be_refused_outright(paywall):
    wall, verify, _ = paywall
    payment = with_signature(await signed(wall), "0x" + "78" * 64)
    out = await admit(wall, header(payment))
    assert out == Refusal(402, "payment invalid: smart-wallet signatures are not accepted")
    assert verify.call_count == 0
    assert len(wall.limits.clients) == 1
    # Charged to the client that sent it: its burst of one is spent.
    assert (await admit(wall, header(payment))).status == 429


async def test_facilitator_refusals_are_charged_to_the_client(paywall):
    wall, verify, _ = paywall
    verify.respond(200, json=BROKE)
    for _ in range(3):  # three payers, one client: the client's burst is spent
        assert (await admit(wall, header(await signed(wall)))).status == 402
    limited = await admit(wall, header(await signed(wall)))
    assert limited.status == 429 and limited.scope == "client"
    assert verify.call_count == 3
