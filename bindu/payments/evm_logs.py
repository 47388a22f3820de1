"""EVM event topics and log-field helpers, shared by the chain probe, the refund check and
the devnet. Log fields arrive as web3 values (int, bytes) or raw JSON-RPC hex strings."""

from __future__ import annotations

from typing import Any

from eth_utils.crypto import keccak


def event_topic(signature: str) -> str:
    return "0x" + keccak(text=signature).hex()


TRANSFER_TOPIC = event_topic("Transfer(address,address,uint256)")
AUTHORIZATION_USED_TOPIC = event_topic("AuthorizationUsed(address,bytes32)")
AUTHORIZATION_CANCELED_TOPIC = event_topic("AuthorizationCanceled(address,bytes32)")


def address_topic(address: str) -> str:
    """An address as an indexed topic (32 bytes, lower case)."""
    return "0x" + address.lower().removeprefix("0x").rjust(64, "0")


def topic_address(topic: str) -> str:
    """The address inside an indexed topic (lower case)."""
    return "0x" + to_hex(topic)[-40:]


def to_hex(value: Any) -> str:
    """bytes or text as 0x-prefixed lower-case hex."""
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    text = str(value).lower()
    return text if text.startswith("0x") else "0x" + text


def to_int(value: Any) -> int:
    """A quantity as web3 (int), raw JSON-RPC ("0x1a") or a log's data (bytes) gives it."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a quantity")
    if isinstance(value, int):
        return value
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(bytes(value), "big") if value else 0
    text = str(value)
    if text.startswith(("0x", "0X")):
        return int(text, 16) if len(text) > 2 else 0
    return int(text)
