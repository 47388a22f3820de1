"""The Devnet stack itself: keys, funding, chain time, mining control, server environment."""

from __future__ import annotations

import asyncio
import json

import pytest

from bindu.devnet import Devnet, DevnetError
from bindu.settings import load_settings
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

# anvil's first well-known dev account: must never be used here.
ANVIL_DEFAULT_ACCOUNT = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


async def block_number(devnet: Devnet) -> int:
    return int(await devnet.rpc.call("eth_blockNumber"), 16)


async def test_keys_are_fresh_and_funded(devnet):
    info = devnet.info
    addresses = {info.facilitator_address, info.pay_to, *(p.address for p in devnet.payers)}
    assert len(addresses) == 2 + len(devnet.payers)
    assert ANVIL_DEFAULT_ACCOUNT not in addresses
    assert int(await devnet.rpc.call("eth_getBalance", info.facilitator_address, "latest"), 16) > 0

    payer = await devnet.new_payer(123)
    assert payer.address not in addresses
    assert await devnet.balance_of(payer.address) == 123
    assert int(await devnet.rpc.call("eth_getBalance", payer.address, "latest"), 16) > 0
    assert await devnet.tx_count(payer.address) == 0


async def test_idle_miner_moves_chain_time(devnet):
    start_time, start_block = await devnet.latest_block_time(), await block_number(devnet)

    async def time_moved() -> bool:
        return await devnet.latest_block_time() > start_time

    await until(time_moved, timeout=10, what="a later block timestamp without transactions")
    assert await block_number(devnet) > start_block


async def test_held_mining_makes_no_blocks_until_released(devnet, payer, held_mining):
    held_at = await block_number(devnet)
    tx = await devnet.send_transaction(payer, payer.address, "0x")
    # A bounded observation window, not a wait for something to happen: 2.5 idle intervals.
    await asyncio.sleep(2.5 * 1.0)
    assert await block_number(devnet) == held_at
    assert await devnet.tx_count(payer.address) == 1  # pending counts
    assert await devnet.rpc.call("eth_getTransactionReceipt", tx) is None

    with pytest.raises(DevnetError, match="mining is held"):
        await devnet.new_payer(1)

    await devnet.release_mining()
    receipt = await devnet.receipt(tx, wait_seconds=5)
    assert int(receipt["status"], 16) == 1
    await devnet.mine(3)
    assert await block_number(devnet) >= held_at + 4


def test_server_env_loads_as_bindu_settings(devnet, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = devnet.server_env(amount=5, STORAGE__URL="memory://", X402__ASSET_VERSION=None)
    info = devnet.info
    assert env["X402__AMOUNT"] == "5" and env["STORAGE__URL"] == "memory://"
    assert "X402__ASSET_VERSION" not in env
    assert json.loads(env["X402__RPC_URLS"]) == {info.network: info.rpc_url}
    for name, value in devnet.server_env().items():
        monkeypatch.setenv(name, value)

    settings = load_settings()
    assert settings.x402.facilitator_url == info.facilitator_url
    assert settings.x402.pay_to == info.pay_to
    assert settings.x402.network == info.network == f"eip155:{info.chain_id}"
    assert settings.x402.asset == info.token_address
    assert settings.x402.amount == 10_000
    assert (settings.x402.asset_name, settings.x402.asset_version) == ("USD Coin", "2")
    assert settings.x402.rpc_urls == {info.network: info.rpc_url}


def test_info_needs_a_running_devnet():
    with pytest.raises(DevnetError, match="not running"):
        _ = Devnet().info
