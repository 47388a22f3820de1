"""``bindu reconcile --once``: one reconciliation pass against the configured storage, then
``payment-unresolved`` records re-judged on chain for every network ``X402__RPC_URLS``
covers (a proof turns them orphaned or void; anything less leaves them unresolved)."""

from __future__ import annotations

import argparse
import asyncio

from bindu.cli.logging import configure
from bindu.cli.table import table
from bindu.payments.facilitator import make_facilitator_client
from bindu.reconcile.service import Outcome, Reconciler
from bindu.settings import load_settings
from bindu.storage.factory import open_storage


async def _once() -> list[Outcome]:
    settings = load_settings()
    configure(settings.log_level)
    x402 = settings.x402
    storage = await open_storage(settings.storage)
    facilitator = make_facilitator_client(x402) if x402.facilitator_url else None
    reconciler = Reconciler(storage, x402, facilitator=facilitator)
    try:
        outcomes = await reconciler.run_pass()
        # Unresolved verdicts are final for the server; with an RPC URL given here, the
        # chain may now prove what the facilitator could not.
        return outcomes + await reconciler.rejudge_unresolved()
    finally:
        await reconciler.close()
        if facilitator is not None:
            await facilitator.aclose()
        await storage.close()


def reconcile(args: argparse.Namespace) -> int:
    outcomes = asyncio.run(_once())
    rows = [
        (
            o.payment_id,
            o.task_id,
            o.decision.verdict.value,
            o.decision.attempts,
            o.decision.next_check_at.isoformat(timespec="seconds")
            if o.decision.next_check_at
            else "",
            o.decision.reason
            if o.written or o.kept
            else f"(not written: another writer won) {o.decision.reason}",
        )
        for o in outcomes
    ]
    if rows:
        print(table(["payment", "task", "verdict", "attempts", "next check", "reason"], rows))
    print(f"{len(outcomes)} payment(s) examined")
    return 0
