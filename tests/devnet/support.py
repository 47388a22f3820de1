"""Helpers for devnet tests: requirements as a server would offer them, and SDK signing."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from bindu.devnet import Devnet

AMOUNT = 10_000


def requirements(
    devnet: Devnet, pay_to: str, *, amount: int = AMOUNT, max_timeout_seconds: int = 300
) -> PaymentRequirements:
    info = devnet.info
    return PaymentRequirements(
        scheme="exact",
        network=info.network,
        asset=info.token_address,
        amount=str(amount),
        pay_to=pay_to,
        max_timeout_seconds=max_timeout_seconds,
        extra={"name": info.token_name, "version": info.token_version},
    )


async def sign(payer: LocalAccount, offer: PaymentRequirements) -> PaymentPayload:
    """What a real client sends: the SDK's exact EVM scheme signing an EIP-3009 authorization."""
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(payer))
    client.set_spend_controls(False)  # the devnet token is not one of the SDK's known assets
    payload = await client.create_payment_payload(PaymentRequired(accepts=[offer]))
    assert isinstance(payload, PaymentPayload)
    return payload


def nonce_of(payload: PaymentPayload) -> str:
    nonce: str = payload.payload["authorization"]["nonce"]
    return nonce


def valid_before_of(payload: PaymentPayload) -> int:
    return int(payload.payload["authorization"]["validBefore"])
