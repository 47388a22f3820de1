"""The devnet token: its committed artifact, call encoding and event decoding."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any, TypedDict

from eth_abi.abi import decode, encode
from eth_account.signers.local import LocalAccount
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

from bindu.payments.evm_logs import AUTHORIZATION_USED_TOPIC

ARTIFACT_NAME = "EIP3009Token.json"


class TransferLog(TypedDict):
    from_address: str
    to: str
    value: int
    transaction_hash: str
    block_number: int
    log_index: int


class AuthorizationLog(TypedDict):
    event: str  # "used" or "canceled"
    authorizer: str
    nonce: str
    transaction_hash: str
    block_number: int


@cache
def artifact() -> dict[str, Any]:
    """The compiled token (see contracts/compile.mjs), shipped as package data."""
    text = resources.files("bindu.devnet").joinpath("contracts", ARTIFACT_NAME).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def deploy_data(name: str, version: str) -> str:
    """Creation bytecode with the constructor's (name, version) EIP-712 domain arguments."""
    bytecode: str = artifact()["bytecode"]
    return bytecode + encode(["string", "string"], [name, version]).hex()


def call_data(signature: str, types: list[str], args: list[Any]) -> str:
    """ABI calldata for `signature`, e.g. call_data("mint(address,uint256)", [...], [...])."""
    selector = function_signature_to_4byte_selector(signature)
    return "0x" + (selector + encode(types, args)).hex()


def decode_single(abi_type: str, data: str) -> Any:
    return decode([abi_type], bytes.fromhex(data.removeprefix("0x")))[0]


def nonce_bytes(nonce: bytes | str) -> bytes:
    raw = nonce if isinstance(nonce, bytes) else bytes.fromhex(nonce.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError("an EIP-3009 nonce is 32 bytes")
    return raw


def _topic_address(topic: str) -> str:
    return to_checksum_address("0x" + topic[-40:])


def decode_transfer(log: dict[str, Any]) -> TransferLog:
    return TransferLog(
        from_address=_topic_address(log["topics"][1]),
        to=_topic_address(log["topics"][2]),
        value=int(log["data"], 16),
        transaction_hash=log["transactionHash"],
        block_number=int(log["blockNumber"], 16),
        log_index=int(log["logIndex"], 16),
    )


def decode_authorization(log: dict[str, Any]) -> AuthorizationLog:
    return AuthorizationLog(
        event="used" if log["topics"][0] == AUTHORIZATION_USED_TOPIC else "canceled",
        authorizer=_topic_address(log["topics"][1]),
        nonce=log["topics"][2],
        transaction_hash=log["transactionHash"],
        block_number=int(log["blockNumber"], 16),
    )


def sign_cancel_authorization(
    account: LocalAccount,
    *,
    token: str,
    chain_id: int,
    name: str,
    version: str,
    nonce: bytes,
) -> tuple[int, bytes, bytes]:
    """The authorizer's EIP-712 signature (v, r, s) over CancelAuthorization(authorizer, nonce)."""
    signed = account.sign_typed_data(
        domain_data={
            "name": name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": token,
        },
        message_types={
            "CancelAuthorization": [
                {"name": "authorizer", "type": "address"},
                {"name": "nonce", "type": "bytes32"},
            ]
        },
        message_data={"authorizer": account.address, "nonce": nonce},
    )
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
