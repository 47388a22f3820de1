"""Figure 3: how long a silent orphan stays silent, on the local devnet.

The devnet (anvil, our EIP-3009 token, the SDK's facilitator over HTTP) with the fault
switch ``settle_delay_seconds`` beyond ``X402__SETTLE_TIMEOUT_SECONDS``: the facilitator
settles on chain at once but answers too late, so the server records payment-failed while
the transfer has landed. An in-process bindu server (``bind``/``serving`` +
``create_app``; SQLite, echo agent, RPC configured, reconciliation every second) and
``PayingClient``s paying ``message/send``, several at once.

Per orphan, three instants:

* the transfer is visible: a watcher polls the chain every 50 ms (one ``eth_blockNumber``
  per poll, then the new blocks' ``AuthorizationUsed`` logs), so this is the first poll
  that sees the block holding it (its block timestamp is kept too, 1 s resolution);
* the server gives up on settle: the paid request's answer (payment-failed);
* payment-orphaned: a second watcher reads the payment's status from storage (its own
  SQLite connection) every 50 ms.

Target: p95 from "transfer visible" to payment-orphaned within one interval + 1 s.

``python -m bench.detection [--quick] [--json PATH]``
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from bench.common import FigureResult, percentile, quiet, run_figure
from bindu.devnet import Devnet, PayingClient
from bindu.devnet.client import parse_payment_required
from bindu.examples.echo import agent
from bindu.server.app import create_app
from bindu.server.embedded import bind, serving
from bindu.settings import (
    ReconciliationSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    X402Settings,
)
from bindu.storage.sqlite import SqliteStorage

INTERVAL = 1.0
SETTLE_TIMEOUT = 1.0
SETTLE_DELAY = SETTLE_TIMEOUT + 1.5
POLL = 0.05
USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()


@dataclass
class Orphan:
    payer: str
    nonce: str
    sent: float
    failed: float = 0.0  # the paid request's answer arrived
    task_id: str = ""
    status_on_answer: str = ""
    visible: float = 0.0  # first chain poll that saw the transfer
    visible_wall: float = 0.0
    block: int = 0
    block_time: int = 0
    tx: str = ""
    orphaned: float = 0.0
    orphaned_wall: float = 0.0
    receipt_tx: str = ""
    found: asyncio.Event = field(default_factory=asyncio.Event)


class ChainWatcher:
    """Every POLL: the latest block number; for each new block its AuthorizationUsed logs."""

    def __init__(self, devnet: Devnet, orphans: dict[tuple[str, str], Orphan]) -> None:
        self._devnet = devnet
        self._orphans = orphans
        self._last = 0
        self.polls = 0

    async def run(self) -> None:
        rpc = self._devnet.rpc
        self._last = int(await rpc.call("eth_blockNumber"), 16)
        while True:
            await asyncio.sleep(POLL)
            self.polls += 1
            latest = int(await rpc.call("eth_blockNumber"), 16)
            if latest <= self._last:
                continue
            seen, seen_wall = time.monotonic(), time.time()
            logs = await rpc.call(
                "eth_getLogs",
                {
                    "address": self._devnet.info.token_address,
                    "fromBlock": hex(self._last + 1),
                    "toBlock": hex(latest),
                    "topics": [USED_TOPIC],
                },
            )
            self._last = latest
            for log in logs:
                payer = "0x" + log["topics"][1][-40:]
                orphan = self._orphans.get((payer.lower(), log["topics"][2].lower()))
                if orphan is None or orphan.visible:
                    continue
                block = await rpc.call("eth_getBlockByNumber", log["blockNumber"], False)
                orphan.visible, orphan.visible_wall = seen, seen_wall
                orphan.block = int(log["blockNumber"], 16)
                orphan.block_time = int(block["timestamp"], 16)
                orphan.tx = log["transactionHash"]


class StatusWatcher:
    """Every POLL: the payment status of each task still waiting, from storage."""

    def __init__(self, storage: SqliteStorage, orphans: dict[tuple[str, str], Orphan]) -> None:
        self._storage = storage
        self._orphans = orphans
        self.done = asyncio.Event()
        self.expected = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            waiting = [o for o in self._orphans.values() if o.task_id and not o.orphaned]
            for orphan in waiting:
                record = await self._storage.get_payment_for_task(orphan.task_id)
                if record is not None and record.status.value == "payment-orphaned":
                    orphan.orphaned, orphan.orphaned_wall = time.monotonic(), time.time()
                    orphan.receipt_tx = record.receipt.transaction if record.receipt else ""
                    orphan.found.set()
            finished = sum(1 for o in self._orphans.values() if o.orphaned)
            if self.expected and finished >= self.expected:
                self.done.set()


async def _worker(
    url: str,
    devnet: Devnet,
    count: int,
    orphans: dict[tuple[str, str], Orphan],
    required: Any,
) -> None:
    payer = await devnet.new_payer(count * devnet_amount(devnet) * 2)
    async with PayingClient(url, payer) as client:
        for i in range(count):
            # A random pause: without it the clients fall into step with the reconciler's
            # passes and every orphan would wait the same part of an interval.
            await asyncio.sleep(random.uniform(0, INTERVAL))
            payload = await client.sign(required)
            auth = payload.payload["authorization"]
            key = (str(auth["from"]).lower(), str(auth["nonce"]).lower())
            orphan = Orphan(payer=key[0], nonce=key[1], sent=time.monotonic())
            orphans[key] = orphan
            reply = await client.send_text(f"orphan {i}", payment=payload)
            orphan.failed = time.monotonic()
            result = reply.response.json().get("result", {})
            orphan.task_id = result.get("id", "")
            orphan.status_on_answer = result.get("metadata", {}).get("x402.payment.status", "")
            # Wait for this one's verdict before the next, so the facilitator is never
            # the queue; other workers keep several orphans in flight.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(orphan.found.wait(), 30)


def devnet_amount(devnet: Devnet) -> int:
    return int(devnet.server_env()["X402__AMOUNT"])


async def measure(quick: bool = False) -> FigureResult:
    quiet()
    total = 12 if quick else 60
    workers = 4 if quick else 6
    per_worker = -(-total // workers)
    result = FigureResult("3", "detection latency of a silent orphan on the devnet")
    started = time.perf_counter()
    orphans: dict[tuple[str, str], Orphan] = {}
    async with Devnet() as devnet:
        info = devnet.info
        with tempfile.TemporaryDirectory(prefix="bindu-bench-") as tmp:
            db = str(Path(tmp) / "bindu.db")
            sock = bind()
            port = sock.getsockname()[1]
            settings = Settings(
                _env_file=None,  # type: ignore[call-arg]
                storage=StorageSettings(url=f"sqlite:///{db}"),
                server=ServerSettings(host="127.0.0.1", port=port, workers=workers),
                x402=X402Settings(
                    facilitator_url=info.facilitator_url,
                    pay_to=info.pay_to,
                    network=info.network,
                    asset=info.token_address,
                    amount=devnet_amount(devnet),
                    asset_name=info.token_name,
                    asset_version=info.token_version,
                    settle_timeout_seconds=SETTLE_TIMEOUT,
                    rpc_urls={info.network: info.rpc_url},
                    reconciliation=ReconciliationSettings(interval_seconds=INTERVAL),
                ),
                log_level="WARNING",
            )
            devnet.faults.update({"settle_delay_seconds": SETTLE_DELAY})
            reader = SqliteStorage(db)
            async with serving(create_app(settings, agent), sock) as url:
                await reader.open()
                chain = ChainWatcher(devnet, orphans)
                status = StatusWatcher(reader, orphans)
                status.expected = per_worker * workers
                watchers = [asyncio.create_task(chain.run()), asyncio.create_task(status.run())]
                try:
                    async with PayingClient(url, devnet.payers[0]) as probe:
                        response = await probe.rpc(
                            "message/send",
                            {
                                "message": {
                                    "kind": "message",
                                    "role": "user",
                                    "parts": [{"kind": "text", "text": "price?"}],
                                    "messageId": "price",
                                }
                            },
                        )
                        required = parse_payment_required(response)
                    await asyncio.gather(
                        *(
                            _worker(url, devnet, per_worker, orphans, required)
                            for _ in range(workers)
                        )
                    )
                    await asyncio.wait_for(status.done.wait(), 30)
                except TimeoutError:
                    pass
                finally:
                    for task in watchers:
                        task.cancel()
                    await asyncio.gather(*watchers, return_exceptions=True)
                    await reader.close()
                    devnet.faults.reset()
    all_ = list(orphans.values())
    done = [o for o in all_ if o.orphaned and o.visible]
    from_visible = [o.orphaned - o.visible for o in done]
    from_block = [o.orphaned_wall - o.block_time for o in done]
    from_failed = [o.orphaned - o.failed for o in done]
    visible_after_send = [o.visible - o.sent for o in done]
    failed_after_visible = [o.failed - o.visible for o in done]
    mismatched = sum(1 for o in done if o.receipt_tx.lower() != o.tx.lower())
    p50, p95 = percentile(from_visible, 0.5), percentile(from_visible, 0.95)
    target = INTERVAL + 1.0
    result.add(
        "orphans detected / created",
        f"{len(done)} / {len(all_)}",
        note=f"{workers} paying clients at once; receipts matching the chain: "
        f"{len(done) - mismatched}",
    )
    result.add("transfer visible -> payment-orphaned, p50", round(p50, 2), "s")
    result.add(
        "transfer visible -> payment-orphaned, p95",
        round(p95, 2),
        "s",
        target=f"<= interval + 1 s = {target:.0f} s",
        ok=p95 <= target,
    )
    result.add(
        "block timestamp -> payment-orphaned, p50 / p95",
        f"{percentile(from_block, 0.5):.2f} / {percentile(from_block, 0.95):.2f}",
        "s",
        note="block timestamps have 1 s resolution",
    )
    result.add(
        "share before the server gives up (visible -> settle timeout), p50",
        round(percentile(failed_after_visible, 0.5), 2),
        "s",
        note=f"X402__SETTLE_TIMEOUT_SECONDS={SETTLE_TIMEOUT:g}",
    )
    result.add(
        "reconciler's share (payment-failed -> orphaned), p50 / p95",
        f"{percentile(from_failed, 0.5):.2f} / {percentile(from_failed, 0.95):.2f}",
        "s",
        note=f"interval {INTERVAL:g} s",
    )
    result.details = {
        "interval_s": INTERVAL,
        "settle_timeout_s": SETTLE_TIMEOUT,
        "settle_delay_s": SETTLE_DELAY,
        "poll_s": POLL,
        "workers": workers,
        "created": len(all_),
        "detected": len(done),
        "statuses_on_answer": sorted({o.status_on_answer for o in all_}),
        "visible_after_send_p50_s": round(percentile(visible_after_send, 0.5), 3),
        "from_visible_s": sorted(round(x, 3) for x in from_visible),
        "from_failed_s": sorted(round(x, 3) for x in from_failed),
        "chain_polls": chain.polls,
    }
    result.seconds = time.perf_counter() - started
    return result


def main() -> None:
    run_figure(__doc__, measure)


if __name__ == "__main__":
    main()
