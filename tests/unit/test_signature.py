"""The local EIP-3009 signature check: real signatures made by the x402 SDK's client."""

from __future__ import annotations

import dataclasses

import pytest
from eth_abi import encode
from eth_account import Account
from eth_keys.constants import SECPK1_N
from x402.mechanisms.evm.constants import ERC6492_MAGIC_VALUE
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.mechanisms.evm.verify import verify_eoa_signature
from x402.schemas import PaymentRequired, PaymentRequirements

from bindu.devnet import PayingClient
from bindu.payments.signature import SignatureCheck, check_signature

ASSET = "0x" + "11" * 20
PAY_TO = "0x" + "22" * 20
REQUIREMENTS = PaymentRequirements(
    scheme="exact",
    network="eip155:31337",
    asset=ASSET,
    amount="10000",
    pay_to=PAY_TO,
    max_timeout_seconds=300,
    extra={"name": "USD Coin", "version": "2"},
)
PAYER = Account.create()


async def sign(requirements: PaymentRequirements = REQUIREMENTS, account=PAYER):
    async with PayingClient("http://server.test", account) as client:
        payload = await client.sign(PaymentRequired(x402_version=2, accepts=[requirements]))
    inner = ExactEIP3009Payload.from_dict(payload.payload)
    assert inner.signature is not None
    return inner.authorization, inner.signature


def other(requirements: PaymentRequirements, **changes) -> PaymentRequirements:
    return requirements.model_copy(update=changes)


async def test_a_real_signature_is_signed():
    authorization, signature = await sign()
    assert check_signature(authorization, signature, REQUIREMENTS) is SignatureCheck.SIGNED


async def test_a_signature_for_someone_else_is_forged():
    authorization, signature = await sign(account=Account.create())
    claimed = dataclasses.replace(authorization, from_address=PAYER.address)
    assert check_signature(claimed, signature, REQUIREMENTS) is SignatureCheck.FORGED


@pytest.mark.parametrize(
    "checked_against",
    [
        other(REQUIREMENTS, network="eip155:1"),  # another chain id
        other(REQUIREMENTS, asset="0x" + "33" * 20),  # another verifying contract
        other(REQUIREMENTS, extra={"name": "USD Coin", "version": "1"}),
        other(REQUIREMENTS, extra={"name": "USDC", "version": "2"}),
    ],
    ids=["chain-id", "verifying-contract", "domain-version", "domain-name"],
)
async def test_a_signature_for_another_domain_is_forged(checked_against):
    authorization, signature = await sign()
    assert check_signature(authorization, signature, checked_against) is SignatureCheck.FORGED


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value", "10001"),
        ("nonce", "0x" + "ab" * 32),
        ("valid_before", "1"),
        ("valid_after", "1"),
        ("to", "0x" + "44" * 20),
    ],
)
async def test_a_tampered_authorization_is_forged(field, value):
    authorization, signature = await sign()
    tampered = dataclasses.replace(authorization, **{field: value})
    assert check_signature(tampered, signature, REQUIREMENTS) is SignatureCheck.FORGED


async def test_the_high_s_twin_is_forged_though_it_recovers():
    authorization, signature = await sign()
    raw = bytes.fromhex(signature.removeprefix("0x"))
    s = int.from_bytes(raw[32:64], "big")
    twin = raw[:32] + (SECPK1_N - s).to_bytes(32, "big") + bytes([55 - raw[64]])
    digest = hash_eip3009_authorization(
        authorization, 31337, ASSET, "USD Coin", "2"
    )  # the twin is mathematically valid: only the token's low-s rule refuses it
    assert verify_eoa_signature(digest, twin, PAYER.address)
    assert check_signature(authorization, "0x" + twin.hex(), REQUIREMENTS) is SignatureCheck.FORGED


async def test_v_as_0_or_1_is_still_signed():
    authorization, signature = await sign()
    raw = bytes.fromhex(signature.removeprefix("0x"))
    low_v = "0x" + (raw[:64] + bytes([raw[64] - 27])).hex()
    assert check_signature(authorization, low_v, REQUIREMENTS) is SignatureCheck.SIGNED


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "0x",
        "0xzz",
        "not hex at all",
        "0x" + "00" * 65,  # recovers nobody
        "0x" + "11" * 64 + "05",  # v is neither 0/1 nor 27/28
        "0x" + "ff" * 10 + ERC6492_MAGIC_VALUE.hex(),  # a 6492 suffix on garbage
        12345,
        None,
    ],
)
async def test_garbage_is_forged(signature):
    authorization, _ = await sign()
    assert check_signature(authorization, signature, REQUIREMENTS) is SignatureCheck.FORGED


@pytest.mark.parametrize(
    "signature",
    [
        "0x" + "11" * 64,  # EIP-1271 wallets sign in any length but 65
        "0x" + "11" * 300,
        "0x"
        + (
            encode(["address", "bytes", "bytes"], ["0x" + "55" * 20, b"\x01\x02", b"\x07" * 65])
            + ERC6492_MAGIC_VALUE
        ).hex(),  # ERC-6492: a wallet not deployed yet
    ],
    ids=["64-bytes", "300-bytes", "erc-6492"],
)
async def test_smart_wallet_signatures_are_unverifiable(signature):
    authorization, _ = await sign()
    assert check_signature(authorization, signature, REQUIREMENTS) is SignatureCheck.UNVERIFIABLE


async def test_requirements_without_a_domain_accept_nothing():
    authorization, signature = await sign()
    bare = other(REQUIREMENTS, extra={})
    assert check_signature(authorization, signature, bare) is SignatureCheck.FORGED


@pytest.mark.parametrize(
    ("field", "value"),
    [("from_address", "0xnot-an-address"), ("value", "-1"), ("nonce", "0x12"), ("value", "x")],
)
async def test_unencodable_fields_are_forged_not_errors(field, value):
    authorization, signature = await sign()
    bad = dataclasses.replace(authorization, **{field: value})
    assert check_signature(bad, signature, REQUIREMENTS) is SignatureCheck.FORGED
