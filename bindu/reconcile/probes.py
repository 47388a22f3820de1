"""Read-only probes: the chain (authoritative) and the facilitator's ``/verify``.

Each probe returns Evidence and never raises: a source that is down becomes a
ProbeFailure, counted and retried on the backoff schedule.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound
from x402.http import HTTPFacilitatorClient
from x402.schemas import PaymentPayload, PaymentRequirements

from bindu.metrics import PROBE_SECONDS, RECONCILE_ERRORS
from bindu.payments.evm_logs import (
    AUTHORIZATION_CANCELED_TOPIC,
    AUTHORIZATION_USED_TOPIC,
    TRANSFER_TOPIC,
    address_topic,
    to_hex,
)
from bindu.payments.records import PaymentRecord
from bindu.payments.settle import verify_refusal
from bindu.reconcile.evidence import ChainEvidence, ChainUse, Evidence, ProbeFailure, VerifyEvidence

AUTHORIZATION_STATE_ABI: list[dict[str, Any]] = [
    {
        "name": "authorizationState",
        "type": "function",
        "stateMutability": "view",
        "inputs": [
            {"name": "authorizer", "type": "address"},
            {"name": "nonce", "type": "bytes32"},
        ],
        "outputs": [{"name": "", "type": "bool"}],
    }
]
# How far back eth_getLogs looks for the authorization's log when no hash is known, and in
# windows of what size: public RPC providers cap the range of one query (blocks).
LOG_LOOKBACK_BLOCKS = 50_000
LOG_WINDOW_BLOCKS = 2_000


def _field(log: Any, key: str) -> Any:
    return log.get(key)


class ChainProbe:
    """One shared AsyncWeb3 client per network (from ``X402__RPC_URLS``)."""

    def __init__(
        self, rpc_urls: dict[str, str], timeout: float, *, log_window: int = LOG_WINDOW_BLOCKS
    ) -> None:
        self._log_window = log_window
        # The timeout bounds each RPC request; the backoff schedule, not the client, retries.
        self._clients = {
            network: AsyncWeb3(
                AsyncHTTPProvider(
                    url,
                    request_kwargs={"timeout": timeout},
                    exception_retry_configuration=None,
                )
            )
            for network, url in rpc_urls.items()
        }

    def covers(self, network: str) -> bool:
        return network in self._clients

    async def close(self) -> None:
        for client in self._clients.values():
            await client.provider.disconnect()

    async def probe(self, record: PaymentRecord) -> Evidence:
        started = time.perf_counter()
        try:
            return await self._probe(self._clients[record.network], record)
        except Exception as exc:
            RECONCILE_ERRORS.labels("chain").inc()
            return ProbeFailure("chain", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            PROBE_SECONDS.labels("chain").observe(time.perf_counter() - started)

    async def _probe(self, w3: AsyncWeb3[Any], record: PaymentRecord) -> ChainEvidence:
        token = w3.eth.contract(
            address=w3.to_checksum_address(record.asset), abi=AUTHORIZATION_STATE_ABI
        )
        nonce = bytes.fromhex(record.nonce.removeprefix("0x"))
        used, latest = await asyncio.gather(
            token.functions.authorizationState(w3.to_checksum_address(record.payer), nonce).call(),
            w3.eth.get_block("latest"),
        )
        use = await self._find_use(w3, record, int(latest["number"])) if used else None
        return ChainEvidence(
            used=bool(used),
            use=use,
            latest_block=int(latest["number"]),
            latest_time=int(latest["timestamp"]),
        )

    async def _find_use(
        self, w3: AsyncWeb3[Any], record: PaymentRecord, latest: int
    ) -> ChainUse | None:
        if record.settle_tx:
            try:
                receipt = await w3.eth.get_transaction_receipt(record.settle_tx)  # type: ignore[arg-type]
            except TransactionNotFound:
                receipt = None
            if receipt is not None:
                use = self._use_in(record, receipt)
                if use is not None:
                    return use
        # Newest window first: the transfer is almost always recent.
        floor = max(0, latest - LOG_LOOKBACK_BLOCKS)
        high = latest
        while high >= floor:
            low = max(floor, high - self._log_window + 1)
            logs = await w3.eth.get_logs(
                {
                    "address": w3.to_checksum_address(record.asset),
                    "fromBlock": low,
                    "toBlock": high,
                    "topics": [
                        [AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC],
                        address_topic(record.payer),
                        record.nonce,
                    ],
                }
            )
            for log in logs:
                if _field(log, "removed"):
                    continue  # a log from a block that was reorganised away
                receipt = await w3.eth.get_transaction_receipt(log["transactionHash"])
                use = self._use_in(record, receipt)
                if use is not None:
                    return use
            high = low - 1
        return None

    def _use_in(self, record: PaymentRecord, receipt: Any) -> ChainUse | None:
        if int(receipt["status"]) != 1:
            return None
        token = record.asset.lower()
        payer_topic = address_topic(record.payer)
        found: tuple[bool, Any] | None = None
        transfer_ok = False
        for log in receipt["logs"]:
            if str(log["address"]).lower() != token or _field(log, "removed"):
                continue
            topics = [to_hex(t).lower() for t in log["topics"]]
            if (
                len(topics) == 3
                and topics[0] in (AUTHORIZATION_USED_TOPIC, AUTHORIZATION_CANCELED_TOPIC)
                and topics[1] == payer_topic
                and topics[2] == record.nonce.lower()
            ):
                found = (topics[0] == AUTHORIZATION_CANCELED_TOPIC, log)
            elif (
                len(topics) == 3
                and topics[0] == TRANSFER_TOPIC
                and topics[1] == payer_topic
                and topics[2] == address_topic(record.pay_to)
                and int(to_hex(log["data"]), 16) == int(record.amount)
            ):
                transfer_ok = True
        if found is None:
            return None
        canceled, log = found
        return ChainUse(
            tx_hash=to_hex(receipt["transactionHash"]),
            block_number=int(receipt["blockNumber"]),
            canceled=canceled,
            transfer_ok=transfer_ok and not canceled,
        )


class FacilitatorProbe:
    """``/verify`` as the read-only probe: ``nonce_already_used`` means consumed."""

    def __init__(self, client: HTTPFacilitatorClient, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    async def probe(self, record: PaymentRecord) -> Evidence:
        started = time.perf_counter()
        try:
            payload = PaymentPayload.model_validate(record.payload)
            requirements = PaymentRequirements.model_validate(record.requirements)
            answer = await asyncio.wait_for(
                self._client.verify(payload, requirements), self._timeout
            )
            return VerifyEvidence(answer.is_valid, answer.invalid_reason)
        except Exception as exc:
            refused = verify_refusal(exc)
            if refused is not None:  # an answer, only sent with a 4xx status
                return VerifyEvidence(False, refused)
            RECONCILE_ERRORS.labels("facilitator").inc()
            return ProbeFailure("facilitator", f"{type(exc).__name__}: {exc}"[:300])
        finally:
            PROBE_SECONDS.labels("facilitator").observe(time.perf_counter() - started)
