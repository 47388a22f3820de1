"""``bindu devnet``: a local chain, our token and the SDK's facilitator, until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
from pathlib import Path

from bindu.cli.logging import configure
from bindu.devnet import Devnet


async def _run(args: argparse.Namespace) -> None:
    async with Devnet() as devnet:
        env = devnet.server_env()
        # Shell-quoted, so `set -a; . ./devnet.env` works (the RPC URLs are JSON).
        lines = [f"{key}={shlex.quote(value)}" for key, value in env.items()]
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
    for name, account in (("payer", devnet.payers[0]), ("payee", devnet.payee)):
        target = getattr(args, f"{name}_key_file")
        if target:
            _write_key(Path(target), account.key.hex())
            print(f"# {name} {account.address}: key written to {target}")


def _write_key(path: Path, key: str) -> None:
    # Throwaway keys made at start-up: owner-only permissions, never printed.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")


def devnet(args: argparse.Namespace) -> int:
    configure("INFO")
    asyncio.run(_run(args))
    return 0
