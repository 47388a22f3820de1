"""The devnet token against EIP-3009 and USDC's revert strings, as the SDK maps them."""

from __future__ import annotations

import os
import time

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.mechanisms.evm.exact.eip3009_utils import parse_eip3009_transfer_error

from bindu.devnet import token
from bindu.devnet.rpc import RpcError

pytestmark = pytest.mark.devnet

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
TWA_TYPES = ["address", "address", "uint256", "uint256", "uint256", "bytes32"]
AUTH_PARAMS = "address,address,uint256,uint256,uint256,bytes32"
TWA_VRS = f"transferWithAuthorization({AUTH_PARAMS},uint8,bytes32,bytes32)"
TWA_BYTES = f"transferWithAuthorization({AUTH_PARAMS},bytes)"
RWA_VRS = f"receiveWithAuthorization({AUTH_PARAMS},uint8,bytes32,bytes32)"


def domain(devnet):
    info = devnet.info
    return {
        "name": info.token_name,
        "version": info.token_version,
        "chainId": info.chain_id,
        "verifyingContract": info.token_address,
    }


def authorization(payer, to, value=10_000, valid_after=0, valid_before=None):
    return {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": valid_after,
        "validBefore": valid_before if valid_before is not None else int(time.time()) + 600,
        "nonce": os.urandom(32),
    }


def sign_authorization(devnet, signer, auth) -> bytes:
    signed = signer.sign_typed_data(
        domain_data=domain(devnet),
        message_types={
            "TransferWithAuthorization": [
                {"name": "from", "type": "address"},
                {"name": "to", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "validAfter", "type": "uint256"},
                {"name": "validBefore", "type": "uint256"},
                {"name": "nonce", "type": "bytes32"},
            ]
        },
        message_data=auth,
    )
    return bytes(signed.signature)


def twa_args(auth) -> list:
    return [auth[k] for k in ("from", "to", "value", "validAfter", "validBefore", "nonce")]


def vrs_call(auth, signature: bytes) -> str:
    v, r, s = signature[64], signature[:32], signature[32:64]
    return token.call_data(
        TWA_VRS, [*TWA_TYPES, "uint8", "bytes32", "bytes32"], [*twa_args(auth), v, r, s]
    )


def bytes_call(auth, signature: bytes) -> str:
    return token.call_data(TWA_BYTES, [*TWA_TYPES, "bytes"], [*twa_args(auth), signature])


async def eth_call(devnet, data: str, sender: str | None = None):
    call = {"to": devnet.info.token_address, "data": data}
    if sender:
        call["from"] = sender
    return await devnet.rpc.call("eth_call", call, "latest")


async def reverts_with(devnet, data: str, reason: str, sender: str | None = None) -> RpcError:
    with pytest.raises(RpcError) as raised:
        await eth_call(devnet, data, sender)
    assert reason in str(raised.value)
    return raised.value


async def test_metadata_and_domain_separator(devnet):
    assert (
        token.decode_single("string", await eth_call(devnet, token.call_data("name()", [], [])))
        == "USD Coin"
    )
    assert (
        token.decode_single("string", await eth_call(devnet, token.call_data("version()", [], [])))
        == "2"
    )
    assert (
        token.decode_single("uint8", await eth_call(devnet, token.call_data("decimals()", [], [])))
        == 6
    )
    separator = await eth_call(devnet, token.call_data("DOMAIN_SEPARATOR()", [], []))
    expected = encode_typed_data(
        domain_data=domain(devnet),
        message_types={"Cancel": [{"name": "x", "type": "uint256"}]},
        message_data={"x": 0},
    ).header
    assert bytes.fromhex(separator.removeprefix("0x")) == expected


async def test_only_the_deployer_mints(devnet, payer):
    mint = token.call_data("mint(address,uint256)", ["address", "uint256"], [payer.address, 1])
    await reverts_with(devnet, mint, "EIP3009Token: caller is not the owner", sender=payer.address)


async def test_both_overloads_transfer_and_emit(devnet, payer, pay_to):
    relayer = await devnet.new_payer(0)  # anyone may submit an authorization
    first = authorization(payer, pay_to)
    signature = sign_authorization(devnet, payer, first)
    # The v,r,s overload, simulated, then the bytes overload for real.
    await eth_call(devnet, vrs_call(first, signature), relayer.address)
    tx_hash = await devnet.send_transaction(
        relayer, devnet.info.token_address, bytes_call(first, signature)
    )
    receipt = await devnet.receipt(tx_hash)
    assert int(receipt["status"], 16) == 1

    [transfer] = await devnet.transfer_logs(payer.address, pay_to)
    assert (transfer["value"], transfer["transaction_hash"]) == (10_000, tx_hash)
    [used] = await devnet.authorization_logs(payer.address, first["nonce"])
    assert used["event"] == "used"
    assert await devnet.authorization_state(payer.address, first["nonce"])

    second = authorization(payer, pay_to)
    tx_hash = await devnet.send_transaction(
        relayer,
        devnet.info.token_address,
        vrs_call(second, sign_authorization(devnet, payer, second)),
    )
    assert int((await devnet.receipt(tx_hash))["status"], 16) == 1
    assert await devnet.balance_of(pay_to) == 20_000


@pytest.mark.parametrize(
    ("case", "reason", "sdk_code"),
    [
        (
            "not_yet_valid",
            "FiatTokenV2: authorization is not yet valid",
            "invalid_exact_evm_payload_authorization_valid_after",
        ),
        (
            "expired",
            "FiatTokenV2: authorization is expired",
            "invalid_exact_evm_payload_authorization_valid_before",
        ),
        (
            "used",
            "FiatTokenV2: authorization is used or canceled",
            "invalid_exact_evm_nonce_already_used",
        ),
        ("wrong_signer", "FiatTokenV2: invalid signature", "invalid_exact_evm_payload_signature"),
        ("high_s", "FiatTokenV2: invalid signature", "invalid_exact_evm_payload_signature"),
        (
            "short_signature",
            "FiatTokenV2: invalid signature",
            "invalid_exact_evm_payload_signature",
        ),
        (
            "no_funds",
            "ERC20: transfer amount exceeds balance",
            "invalid_exact_evm_insufficient_balance",
        ),
    ],
)
async def test_reverts_use_usdc_strings_the_sdk_maps(devnet, payer, pay_to, case, reason, sdk_code):
    signer, auth = payer, authorization(payer, pay_to)
    if case == "not_yet_valid":
        auth["validAfter"] = int(time.time()) + 3600
    elif case == "expired":
        auth["validBefore"] = 1
    elif case == "wrong_signer":
        signer = Account.create()
    elif case == "no_funds":
        signer = await devnet.new_payer(0)
        auth = authorization(signer, pay_to)
    signature = sign_authorization(devnet, signer, auth)
    if case == "used":
        tx = await devnet.send_transaction(
            payer, devnet.info.token_address, vrs_call(auth, signature)
        )
        await devnet.receipt(tx)
    if case == "high_s":
        # The same signature, malleated: s' = n - s with v flipped recovers the same signer.
        s = int.from_bytes(signature[32:64], "big")
        signature = (
            signature[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - signature[64]])
        )
    data = bytes_call(auth, signature[:64] if case == "short_signature" else signature)

    error = await reverts_with(devnet, data, reason)
    assert parse_eip3009_transfer_error(error) == sdk_code


async def test_cancel_twice_and_receive_only_by_payee(devnet, payer, pay_to):
    nonce = os.urandom(32)
    await devnet.cancel_authorization(payer, nonce)
    with pytest.raises(RpcError, match="FiatTokenV2: authorization is used or canceled"):
        await devnet.cancel_authorization(payer, nonce)

    auth = authorization(payer, pay_to)
    v_r_s = sign_authorization(devnet, payer, auth)  # signed for Transfer, wrong type anyway
    receive = token.call_data(
        RWA_VRS,
        [*TWA_TYPES, "uint8", "bytes32", "bytes32"],
        [*twa_args(auth), v_r_s[64], v_r_s[:32], v_r_s[32:64]],
    )
    await reverts_with(
        devnet, receive, "FiatTokenV2: caller must be the payee", sender=payer.address
    )
