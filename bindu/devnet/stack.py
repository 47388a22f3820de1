"""`Devnet`: anvil + our EIP-3009 token + the SDK facilitator over HTTP, all on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from loguru import logger

from bindu.devnet import token
from bindu.devnet.anvil import DEFAULT_CHAIN_ID, Anvil
from bindu.devnet.errors import DevnetError
from bindu.devnet.facilitator import FacilitatorServer, build_facilitator
from bindu.devnet.faults import FacilitatorStats, FaultSwitch
from bindu.devnet.rpc import JsonRpc
from bindu.payments.evm_logs import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_USED_TOPIC,
    TRANSFER_TOPIC,
    address_topic,
)

IDLE_BLOCK_SECONDS = 1.0
CONFIRMATION_TIMEOUT_SECONDS = 3.0
PAYER_COUNT = 2
PAYER_TOKENS = 100_000_000  # atomic units (6 decimals): 100 tokens per payer
DEFAULT_AMOUNT = 10_000  # atomic units the server asks per task: 0.01 token
ETH_PER_ACCOUNT = 100 * 10**18  # wei: gas money for every generated account
RECEIPT_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class DevnetInfo:
    rpc_url: str
    chain_id: int
    network: str  # CAIP-2, "eip155:<chain id>"
    token_address: str
    token_name: str
    token_version: str
    facilitator_url: str
    facilitator_address: str
    pay_to: str


class Devnet:
    """A running local payment stack. `async with Devnet() as devnet: ...`.

    Every key is generated at start: the deployer (owns and mints the token), the facilitator
    (pays gas for settlements), the payee (`info.pay_to`) and `payer_count` funded payers.
    Anvil automines each transaction; an idle miner adds a block every `idle_block_seconds` so
    chain time keeps moving (a `validBefore` can pass) until `hold_mining()` pauses both.
    """

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        idle_block_seconds: float = IDLE_BLOCK_SECONDS,
        confirmation_timeout_seconds: float = CONFIRMATION_TIMEOUT_SECONDS,
        payer_count: int = PAYER_COUNT,
        payer_tokens: int = PAYER_TOKENS,
        token_name: str = "USD Coin",
        token_version: str = "2",
        amount: int = DEFAULT_AMOUNT,
        anvil_binary: Path | None = None,
    ) -> None:
        self._chain_id = chain_id
        self._idle_block_seconds = idle_block_seconds
        self._confirmation_timeout = confirmation_timeout_seconds
        self._payer_count = payer_count
        self._payer_tokens = payer_tokens
        self._token_name = token_name
        self._token_version = token_version
        self._amount = amount
        self._anvil_binary = anvil_binary

        self._deployer: LocalAccount = Account.create()
        self._facilitator_account: LocalAccount = Account.create()
        self.payee: LocalAccount = Account.create()
        self.payers: list[LocalAccount] = []

        self._stack = AsyncExitStack()
        self._rpc: JsonRpc | None = None
        self._facilitator: FacilitatorServer | None = None
        self._info: DevnetInfo | None = None
        self._token_address = ""
        # One sender at a time: each transaction's nonce is read from the chain.
        self._send_lock = asyncio.Lock()
        # Held while the idle miner mines and while mining is held or released, so no idle
        # evm_mine can land after hold_mining() has returned.
        self._mining_lock = asyncio.Lock()
        self._mining_held = False
        self.startup_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Devnet:
        started = time.monotonic()
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        self.startup_seconds = time.monotonic() - started
        logger.info("devnet ready in {:.2f} s: {}", self.startup_seconds, self.info)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        self._info = None

    async def _start(self) -> None:
        anvil = await self._stack.enter_async_context(
            Anvil(chain_id=self._chain_id, binary=self._anvil_binary)
        )
        self._rpc = JsonRpc(anvil.rpc_url)
        self._stack.push_async_callback(self._rpc.aclose)

        for account in (self._deployer, self._facilitator_account, self.payee):
            await self._fund_eth(account.address)
        self._token_address = await self._deploy_token()
        for _ in range(self._payer_count):
            self.payers.append(await self.new_payer(self._payer_tokens))

        network = f"eip155:{self._chain_id}"
        facilitator = build_facilitator(
            self._facilitator_account.key.hex(),
            anvil.rpc_url,
            network,
            self._confirmation_timeout,
        )
        self._facilitator = FacilitatorServer(facilitator, self.payee_transfer)
        await self._facilitator.start()
        self._stack.push_async_callback(self._facilitator.stop)

        idle_miner = asyncio.create_task(self._idle_miner(), name="devnet-idle-miner")
        self._stack.push_async_callback(_cancel, idle_miner)

        self._info = DevnetInfo(
            rpc_url=anvil.rpc_url,
            chain_id=self._chain_id,
            network=network,
            token_address=self._token_address,
            token_name=self._token_name,
            token_version=self._token_version,
            facilitator_url=self._facilitator.url,
            facilitator_address=self._facilitator_account.address,
            pay_to=self.payee.address,
        )

    # ---------------------------------------------------------------- public API

    @property
    def info(self) -> DevnetInfo:
        if self._info is None:
            raise DevnetError("the devnet is not running")
        return self._info

    @property
    def faults(self) -> FaultSwitch:
        return self._server.faults

    @property
    def stats(self) -> FacilitatorStats:
        return self._server.stats

    @property
    def rpc(self) -> JsonRpc:
        if self._rpc is None:
            raise DevnetError("the devnet is not running")
        return self._rpc

    async def new_payer(self, tokens: int) -> LocalAccount:
        """A fresh key with gas money and `tokens` atomic token units (6 decimals)."""
        payer: LocalAccount = Account.create()
        await self._fund_eth(payer.address)
        if tokens:
            mint = token.call_data(
                "mint(address,uint256)", ["address", "uint256"], [payer.address, tokens]
            )
            await self._deployer_call(mint, to=self._token_address)
        return payer

    async def balance_of(self, address: str) -> int:
        data = token.call_data("balanceOf(address)", ["address"], [address])
        result = await self.rpc.call(
            "eth_call", {"to": self.info.token_address, "data": data}, "latest"
        )
        return int(result, 16)

    async def tx_count(self, address: str) -> int:
        """Transactions sent by `address`: its pending nonce, so a broadcast counts unmined."""
        return int(await self.rpc.call("eth_getTransactionCount", address, "pending"), 16)

    async def authorization_state(self, authorizer: str, nonce: bytes | str) -> bool:
        """The token's authorizationState: True when the nonce was used OR canceled."""
        data = token.call_data(
            "authorizationState(address,bytes32)",
            ["address", "bytes32"],
            [authorizer, token.nonce_bytes(nonce)],
        )
        result = await self.rpc.call(
            "eth_call", {"to": self.info.token_address, "data": data}, "latest"
        )
        return bool(int(result, 16))

    async def cancel_authorization(self, payer: LocalAccount, nonce: bytes | str) -> str:
        """Cancel `payer`'s unused authorization `nonce` (the deployer sends it); the tx hash."""
        raw_nonce = token.nonce_bytes(nonce)
        v, r, s = token.sign_cancel_authorization(
            payer,
            token=self.info.token_address,
            chain_id=self._chain_id,
            name=self._token_name,
            version=self._token_version,
            nonce=raw_nonce,
        )
        cancel = token.call_data(
            "cancelAuthorization(address,bytes32,uint8,bytes32,bytes32)",
            ["address", "bytes32", "uint8", "bytes32", "bytes32"],
            [payer.address, raw_nonce, v, r, s],
        )
        receipt = await self._deployer_call(cancel, to=self.info.token_address)
        tx_hash: str = receipt["transactionHash"]
        return tx_hash

    async def transfer_logs(self, from_addr: str, to_addr: str) -> list[token.TransferLog]:
        """Every Transfer(from_addr -> to_addr) event of the token, oldest first."""
        logs = await self._logs([TRANSFER_TOPIC, address_topic(from_addr), address_topic(to_addr)])
        return [token.decode_transfer(log) for log in logs]

    async def authorization_logs(
        self, authorizer: str, nonce: bytes | str
    ) -> list[token.AuthorizationLog]:
        """AuthorizationUsed / AuthorizationCanceled events for (authorizer, nonce)."""
        nonce_topic = "0x" + token.nonce_bytes(nonce).hex()
        topics: list[Any] = [
            [AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC],
            address_topic(authorizer),
            nonce_topic,
        ]
        return [token.decode_authorization(log) for log in await self._logs(topics)]

    async def hold_mining(self) -> None:
        """Stop producing blocks: transactions wait in the pool until `release_mining()`."""
        async with self._mining_lock:
            await self.rpc.call("evm_setAutomine", False)
            self._mining_held = True

    async def release_mining(self) -> None:
        """Resume automine and the idle miner, mining whatever waited in the pool."""
        async with self._mining_lock:
            await self.rpc.call("evm_setAutomine", True)
            await self.rpc.call("evm_mine")
            self._mining_held = False

    async def mine(self, blocks: int = 1) -> None:
        for _ in range(blocks):
            await self.rpc.call("evm_mine")

    async def latest_block_time(self) -> int:
        block = await self.rpc.call("eth_getBlockByNumber", "latest", False)
        return int(block["timestamp"], 16)

    async def payee_transfer(self, to: str, amount: int) -> str:
        """The payee sends tokens (an operator's refund, by hand); the tx hash once mined."""
        data = token.call_data(
            "transfer(address,uint256)", ["address", "uint256"], [to_checksum_address(to), amount]
        )
        tx_hash = await self.send_transaction(self.payee, self.info.token_address, data)
        await self.receipt(tx_hash)
        return tx_hash

    async def send_transaction(
        self, sender: LocalAccount, to: str | None, data: str, *, gas: int | None = None
    ) -> str:
        """Sign and broadcast a transaction from any funded key; its hash (not waited for).

        Gas is estimated unless given; pass `gas` to broadcast a call that will revert.
        """
        async with self._send_lock:
            # The pending nonce counts transactions still in the pool while mining is held.
            nonce = int(
                await self.rpc.call("eth_getTransactionCount", sender.address, "pending"), 16
            )
            tx: dict[str, Any] = {"data": data}
            if to is not None:
                tx["to"] = to_checksum_address(to)
            if gas is None:
                estimate = await self.rpc.call("eth_estimateGas", {"from": sender.address, **tx})
                gas = int(estimate, 16) * 12 // 10
            gas_price = int(await self.rpc.call("eth_gasPrice"), 16)
            tx.update(nonce=nonce, gas=gas, gasPrice=gas_price, chainId=self._chain_id)
            signed = sender.sign_transaction(tx)
            tx_hash: str = await self.rpc.call(
                "eth_sendRawTransaction", "0x" + signed.raw_transaction.hex()
            )
            return tx_hash

    async def receipt(
        self, tx_hash: str, *, wait_seconds: float = RECEIPT_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """The transaction's receipt, polled until it is mined or `wait_seconds` pass."""
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            found: dict[str, Any] | None = await self.rpc.call("eth_getTransactionReceipt", tx_hash)
            if found is not None:
                return found
            await asyncio.sleep(POLL_SECONDS)
        raise DevnetError(f"no receipt for {tx_hash} after {wait_seconds} s (is mining held?)")

    def server_env(self, **overrides: Any) -> dict[str, str]:
        """Environment for a bindu server paid on this devnet.

        Overrides take short names (`amount=5` sets X402__AMOUNT) or full variable names
        (`STORAGE__URL="memory://"`); a value of None removes the variable.
        """
        info = self.info
        env: dict[str, str] = {
            "X402__FACILITATOR_URL": info.facilitator_url,
            "X402__PAY_TO": info.pay_to,
            "X402__NETWORK": info.network,
            "X402__ASSET": info.token_address,
            "X402__AMOUNT": str(self._amount),
            "X402__ASSET_NAME": info.token_name,
            "X402__ASSET_VERSION": info.token_version,
            "X402__RPC_URLS": json.dumps({info.network: info.rpc_url}),
        }
        for key, value in overrides.items():
            name = key if "__" in key else f"X402__{key.upper()}"
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value if isinstance(value, str) else json.dumps(value)
        return env

    # ------------------------------------------------------------------ internals

    @property
    def _server(self) -> FacilitatorServer:
        if self._facilitator is None:
            raise DevnetError("the devnet is not running")
        return self._facilitator

    async def _fund_eth(self, address: str) -> None:
        await self.rpc.call("anvil_setBalance", address, hex(ETH_PER_ACCOUNT))

    async def _deploy_token(self) -> str:
        receipt = await self._deployer_call(
            token.deploy_data(self._token_name, self._token_version), to=None
        )
        address = to_checksum_address(receipt["contractAddress"])
        logger.info("devnet token {!r} v{} at {}", self._token_name, self._token_version, address)
        return address

    async def _deployer_call(self, data: str, *, to: str | None) -> dict[str, Any]:
        """A deployer transaction (`to=None` creates a contract), waited for and checked."""
        if self._mining_held:
            # It would wait for a block that cannot come: fail now, not at the receipt deadline.
            raise DevnetError("mining is held: release_mining() before minting or canceling")
        tx_hash = await self.send_transaction(self._deployer, to, data)
        receipt = await self.receipt(tx_hash)
        if int(receipt["status"], 16) != 1:
            raise DevnetError(f"devnet transaction {tx_hash} reverted")
        return receipt

    async def _logs(self, topics: list[Any]) -> list[dict[str, Any]]:
        query = {
            "address": self.info.token_address,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": topics,
        }
        logs: list[dict[str, Any]] = await self.rpc.call("eth_getLogs", query)
        return [log for log in logs if not log.get("removed")]

    async def _idle_miner(self) -> None:
        # Anvil's automine only mines when a transaction arrives; without these blocks the
        # chain's clock would stand still and no validBefore would ever pass.
        while True:
            await asyncio.sleep(self._idle_block_seconds)
            async with self._mining_lock:
                if self._mining_held:
                    continue
                try:
                    await self.rpc.call("evm_mine")
                except Exception as exc:
                    logger.warning("devnet idle miner: evm_mine failed: {}", exc)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
