"""``bindu devnet``: a local chain, our token and the SDK's facilitator, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from bindu.cli.logging import configure
from bindu.devnet import Devnet


async def _run(args: argparse.Namespace) -> None:
    async with Devnet() as devnet:
        env = devnet.server_env()
        lines = [f"{key}={value}" for key, value in env.items()]
        print("# environment for `bindu serve` on this devnet:")
        print("\n".join(lines), flush=True)
        await asyncio.to_thread(_write_files, args, lines, devnet)
        print(f"# faults: POST {devnet.info.facilitator_url}/_faults  (Ctrl-C to stop)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def _write_files(args: argparse.Namespace, lines: list[str], devnet: Devnet) -> None:
    if args.env_file:
        Path(args.env_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    if args.payer_key_file:
        # A throwaway key made at start-up; written with owner-only permissions, never printed.
        path = Path(args.payer_key_file)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(devnet.payers[0].key.hex() + "\n")
        print(f"# payer {devnet.payers[0].address}: key written to {path}")


def devnet(args: argparse.Namespace) -> int:
    configure("INFO")
    asyncio.run(_run(args))
    return 0
