"""``bindu demo``: the whole story on the local devnet, with embedded SQLite storage.

1. an unpaid call is refused with HTTP 402;
2. a paid call settles first, then the agent runs;
3. /settle answers after the server's timeout: the task fails while the chain holds the
   transfer — a silent orphan — and the reconciler proves it (payment-orphaned, tx hash);
4. /settle fails before broadcasting: the reconciler proves the money never moved
   (payment-void) once the authorization expires, and the payer's balance is untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bindu.cli.logging import configure
from bindu.cli.table import table
from bindu.devnet import Devnet, PayingClient
from bindu.examples.echo import agent
from bindu.server.app import create_app
from bindu.server.embedded import bind, serving
from bindu.settings import Settings, load_settings
from bindu.storage.factory import open_storage

SETTLE_TIMEOUT = 3  # the server gives /settle this long (seconds)
LATE_BY = 6  # the faulty facilitator answers this long after settling (seconds)
VALIDITY = 20  # authorizations expire this long after signing (seconds)
INTERVAL = 2  # reconciliation interval (seconds)
WAIT = 90  # longest the demo waits for any verdict (seconds)


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"== {title}")


def tokens(atomic: int) -> str:
    return f"{atomic / 1_000_000:.6f} USDC"


def demo_settings(devnet: Devnet, storage_url: str, port: int) -> Settings:
    env = devnet.server_env()
    return load_settings(
        _env_file=None,
        storage={"url": storage_url},
        server={"host": "127.0.0.1", "port": port},
        x402={
            "facilitator_url": env["X402__FACILITATOR_URL"],
            "pay_to": env["X402__PAY_TO"],
            "network": env["X402__NETWORK"],
            "asset": env["X402__ASSET"],
            "amount": int(env["X402__AMOUNT"]),
            "asset_name": env["X402__ASSET_NAME"],
            "asset_version": env["X402__ASSET_VERSION"],
            "rpc_urls": env["X402__RPC_URLS"],
            "settle_timeout_seconds": SETTLE_TIMEOUT,
            "max_timeout_seconds": VALIDITY,
            "reconciliation": {"interval_seconds": INTERVAL},
        },
    )


async def payment_state(client: PayingClient, task_id: str) -> dict[str, Any]:
    reply = await client.signed_in_rpc("tasks/get", {"id": task_id})
    task: dict[str, Any] = reply.json()["result"]
    return task


async def wait_for(client: PayingClient, task_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        task = await payment_state(client, task_id)
        if task["metadata"].get("x402.payment.status") == status:
            return task
        await asyncio.sleep(0.5)
    raise RuntimeError(f"no {status} verdict for task {task_id} within {WAIT} s")


def show_payment(task: dict[str, Any]) -> None:
    meta = task["metadata"]
    say(f"   task state      : {task['status']['state']}")
    say(f"   payment status  : {meta.get('x402.payment.status')}")
    for receipt in meta.get("x402.payment.receipts", []):
        block = receipt.get("blockNumber")
        where = f" (block {block})" if block is not None else ""
        say(f"   receipt tx      : {receipt['transaction']}{where}")
    if meta.get("x402.payment.error"):
        say(f"   payment error   : {meta['x402.payment.error']}")


async def run(storage_url: str) -> None:
    step("Starting the local devnet (anvil, our EIP-3009 token, the x402 SDK facilitator)")
    async with Devnet() as devnet:
        info = devnet.info
        say(f"   chain {info.network} at {info.rpc_url}")
        say(f"   token {info.token_address} ({info.token_name} v{info.token_version})")
        say(f"   facilitator {info.facilitator_url}")
        sock = bind()
        settings = demo_settings(devnet, storage_url, sock.getsockname()[1])
        app = create_app(settings, agent)
        async with serving(app, sock) as url:
            say(f"   bindu server {url} (echo agent, storage {storage_url})")
            payer = devnet.payers[0]
            async with PayingClient(url, payer) as client:
                await _story(devnet, client, payer.address)
        await _ledger(storage_url)


async def _story(devnet: Devnet, client: PayingClient, payer: str) -> None:
    info = devnet.info
    step("1. An unpaid request")
    unpaid = await client.send_text("hello", payment=None)
    [accept] = unpaid.response.json()["accepts"]
    say(f"   HTTP {unpaid.response.status_code}: {unpaid.response.json()['error']}")
    say(f"   price {tokens(int(accept['amount']))} to {accept['payTo']} on {accept['network']}")

    step("2. A paid request: settle first, then the agent works")
    before = await devnet.balance_of(payer)
    paid = await client.send_text("hello, paid world")
    task = paid.response.json()["result"]
    after = await devnet.balance_of(payer)
    say(f"   agent answered  : {task['artifacts'][0]['parts'][0]['text']}")
    show_payment(task)
    say(f"   payer balance   : {tokens(before)} -> {tokens(after)}")

    step(f"3. /settle answers {LATE_BY} s late; the server gives up after {SETTLE_TIMEOUT} s")
    devnet.faults.update({"settle_delay_seconds": LATE_BY})
    before = await devnet.balance_of(payer)
    reply = await client.send_text("this one will be lost")
    devnet.faults.reset()
    task = reply.response.json()["result"]
    show_payment(task)
    logs = await devnet.transfer_logs(payer, info.pay_to)
    say(f"   payer balance   : {tokens(before)} -> {tokens(await devnet.balance_of(payer))}")
    say(f"   on chain        : Transfer in {logs[-1]['transaction_hash']}")
    say("   >> The payer was charged and the task says 'failed': a SILENT ORPHAN payment.")
    say("   >> Nobody was told. The reconciler will catch it from the chain...")
    started = time.monotonic()
    task = await wait_for(client, task["id"], "payment-orphaned")
    say(f"   after {time.monotonic() - started:.1f} s the reconciler proved it:")
    show_payment(task)

    step("4. /settle fails before broadcasting anything")
    devnet.faults.update({"settle_fail_before_broadcast": True})
    before = await devnet.balance_of(payer)
    reply = await client.send_text("this one never reaches the chain")
    devnet.faults.reset()
    task = reply.response.json()["result"]
    show_payment(task)
    say(f"   >> Outcome unknown to the server. The authorization stays valid for {VALIDITY} s;")
    say("   >> once chain time passes validBefore with it unused, money can never move.")
    task = await wait_for(client, task["id"], "payment-void")
    show_payment(task)
    say(f"   payer balance   : {tokens(before)} -> {tokens(await devnet.balance_of(payer))}")


async def _ledger(storage_url: str) -> None:
    step("Payment records (what `bindu payments list` shows an operator)")
    storage = await open_storage(
        load_settings(_env_file=None, storage={"url": storage_url}).storage
    )
    try:
        records = await storage.list_payments(limit=20)
    finally:
        await storage.close()
    rows = [
        (r.task_id[:8], r.status.value, r.amount, (r.receipt.transaction if r.receipt else "")[:18])
        for r in records
    ]
    say(table(["task", "status", "amount", "transaction"], rows))
    say()
    say("Done: every payment has a proven outcome.")


def demo(args: argparse.Namespace) -> int:
    configure("WARNING")
    if args.storage_url:
        asyncio.run(run(args.storage_url))
        return 0
    with tempfile.TemporaryDirectory(prefix="bindu-demo-") as tmp:
        asyncio.run(run(f"sqlite:///{Path(tmp) / 'bindu.db'}"))
    return 0
