"""``bindu pay``: send one paid ``message/send`` with the SDK's x402 client (for trying a
server by hand: the devnet writes a payer key with ``bindu devnet --payer-key-file``)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from eth_account import Account

from bindu.devnet.client import PayingClient
from bindu.errors import BinduError


async def _pay(url: str, key: str, text: str, blocking: bool) -> dict[str, object]:
    account = Account.from_key(key)
    async with PayingClient(url, account) as client:
        reply = await client.send_text(text, blocking=blocking)
    doc: dict[str, object] = reply.response.json()
    return doc


def pay(args: argparse.Namespace) -> int:
    try:
        key = Path(args.key_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BinduError(f"--key-file: {exc.strerror}: {args.key_file}") from None
    doc = asyncio.run(_pay(args.url.rstrip("/"), key, args.text, not args.no_wait))
    task = doc.get("result")
    if not isinstance(task, dict):
        print(json.dumps(doc, indent=2))
        return 1
    print(json.dumps(task, indent=2))
    return 0
