"""The EIP-3009 signature, checked locally before a payment may cost us anything.

A forged payment must be refused by one CPU check, before the durable nonce claim and before
the facilitator is asked. The digest and the recovery are the x402 SDK's own helpers, the
ones its facilitator uses: ``hash_eip3009_authorization`` (EIP-712 ``TransferWithAuthorization``
over the token's domain) and ``verify_eoa_signature`` (secp256k1 recovery; fast with
coincurve installed).

What can be judged here, and what cannot:

- a 65-byte ECDSA signature must recover to ``authorization.from`` for the token's domain
  (name and version from the requirements' ``extra``, chainId from the CAIP-2 network,
  verifyingContract = the asset). Anything else is refused as forged. That refuses, too,
  smart wallets whose signature happens to be 65 bytes of ECDSA by an owner (a 1-of-1 Safe):
  the price of never spending a facilitator call on an unchecked 65-byte signature.
- an ERC-6492 wrapper (undeployed wallet) or a signature of another length (ERC-1271 smart
  wallets) can only be judged on chain. Those are ``UNVERIFIABLE``: the paywall sends them to
  the facilitator only through its smart-wallet rate limit (see ``Paywall.admit``).
"""

from __future__ import annotations

from enum import Enum

from eth_abi.exceptions import EncodingError
from eth_keys.constants import SECPK1_N
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.erc6492 import has_deployment_info, parse_erc6492_signature
from x402.mechanisms.evm.types import ExactEIP3009Authorization
from x402.mechanisms.evm.utils import get_evm_chain_id, hex_to_bytes
from x402.mechanisms.evm.verify import verify_eoa_signature
from x402.schemas import PaymentRequirements

ECDSA_LENGTH = 65
# Tokens following USDC (Circle's ECRecover) reject the malleable high-s twin of a signature.
_HALF_N = SECPK1_N // 2


class SignatureCheck(Enum):
    SIGNED = "signed"  # ECDSA by authorization.from over this token's domain
    UNVERIFIABLE = "unverifiable"  # smart-wallet signature: only the chain can judge it
    FORGED = "forged"  # malformed, or signed by someone else or for another domain


def check_signature(
    authorization: ExactEIP3009Authorization,
    signature: str | None,
    requirements: PaymentRequirements,
) -> SignatureCheck:
    """Judge ``signature`` over ``authorization`` for the token named by ``requirements``.

    Pure and synchronous (no I/O); never raises on hostile input.
    """
    if not isinstance(signature, str):  # the SDK's payload class does not check types
        return SignatureCheck.FORGED
    try:
        raw = hex_to_bytes(signature)
        wrapped = parse_erc6492_signature(raw)
    except (ValueError, TypeError):
        return SignatureCheck.FORGED
    inner = wrapped.inner_signature
    if not inner:
        return SignatureCheck.FORGED
    if has_deployment_info(wrapped) or len(inner) != ECDSA_LENGTH:
        return SignatureCheck.UNVERIFIABLE
    if int.from_bytes(inner[32:64], "big") > _HALF_N:
        return SignatureCheck.FORGED
    extra = requirements.extra or {}
    name, version = extra.get("name"), extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return SignatureCheck.FORGED  # no domain to check against: nothing can be valid
    try:
        digest = hash_eip3009_authorization(
            authorization,
            get_evm_chain_id(requirements.network),
            requirements.asset,
            name,
            version,
        )
        signed = verify_eoa_signature(digest, inner, authorization.from_address)
    except (ValueError, TypeError, OverflowError, EncodingError):
        # Bad v, a nonce that is not 32 bytes of hex, an address that does not encode, ...
        return SignatureCheck.FORGED
    return SignatureCheck.SIGNED if signed else SignatureCheck.FORGED
