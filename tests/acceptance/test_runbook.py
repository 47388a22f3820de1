"""docs/runbook.md, followed as a new operator would: the commands as subprocesses, from an
orphan alert to a recorded refund on the devnet."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from eth_account import Account

from bindu.devnet import PayingClient
from tests.support.servers import REPO, free_port
from tests.support.waiting import until

pytestmark = pytest.mark.devnet


def bindu(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bindu.cli.main", *args],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def read_env(path: Path) -> dict[str, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        pairs[key] = shlex.split(value)[0]
    return pairs


async def test_runbook_from_alert_to_recorded_refund(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("X402__", "STORAGE__"))}
    devnet = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [sys.executable, "-m", "bindu.cli.main", "devnet", "--env-file", "devnet.env",
         "--payer-key-file", "payer.key", "--payee-key-file", "payee.key"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    server = None
    try:

        async def devnet_ready() -> bool:
            return (tmp_path / "payee.key").exists()

        await until(devnet_ready, timeout=60, what="bindu devnet")
        chain = read_env(tmp_path / "devnet.env")
        port = free_port()
        env.update(chain)
        env.update(
            STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
            X402__SETTLE_TIMEOUT_SECONDS="2",
            X402__RECONCILIATION__INTERVAL_SECONDS="2",
        )
        log = (tmp_path / "server.log").open("w")
        server = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [sys.executable, "-m", "bindu.cli.main", "serve",
             "--agent", "bindu.examples.echo:agent", "--port", str(port)],
            cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stderr=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=30) as http:

            async def healthy() -> bool:
                try:
                    return (await http.get(url + "/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(healthy, timeout=60, what="bindu serve")
            # A first, normal sale: the payee's wallet then holds enough for two transfers.
            sale = await asyncio.to_thread(
                bindu, "pay", "--url", url, "--key-file", "payer.key", "first",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert json.loads(sale.stdout)["status"]["state"] == "completed"
            faults = chain["X402__FACILITATOR_URL"] + "/_faults"
            assert (await http.post(faults, json={"settle_delay_seconds": 5})).status_code == 200

            paid = await asyncio.to_thread(
                bindu, "pay", "--url", url, "--key-file", "payer.key", "hello",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            task = json.loads(paid.stdout)
            assert task["metadata"]["x402.payment.status"] == "payment-failed"

            async def alerted() -> bool:
                return "payment.orphaned" in (tmp_path / "server.log").read_text()

            await until(alerted, timeout=30, what="the orphan alert in the server log")
            listed = await asyncio.to_thread(
                bindu, "payments", "list", "--status", "payment-orphaned", "--json",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            [orphan] = json.loads(listed.stdout)
            shown = await asyncio.to_thread(
                bindu, "payments", "show", orphan["id"], env=env, cwd=tmp_path
            )
            assert orphan["payer"] in shown.stdout and "payment-orphaned" in shown.stdout

            wallet = chain["X402__FACILITATOR_URL"] + "/_wallet/transfer"
            stranger = "0x000000000000000000000000000000000000dEaD"
            wrong = (await http.post(wallet, json={"to": stranger, "amount": 10000})).json()
            refused = await asyncio.to_thread(
                bindu, "payments", "mark-refunded", orphan["id"], "--tx", wrong["transaction"],
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert refused.returncode == 1 and "refused" in refused.stderr

            right = (await http.post(wallet, json={"to": orphan["payer"], "amount": 10000})).json()
            recorded = await asyncio.to_thread(
                bindu, "payments", "mark-refunded", orphan["id"], "--tx", right["transaction"],
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert recorded.returncode == 0, recorded.stderr
            after = await asyncio.to_thread(
                bindu, "payments", "list", "--status", "payment-refunded", "--json",
                env=env, cwd=tmp_path,
            )  # fmt: skip
            assert [p["id"] for p in json.loads(after.stdout)] == [orphan["id"]]
            # A paid task is its payer's: read it signed in with the paying wallet.
            payer = Account.from_key((tmp_path / "payer.key").read_text().strip())
            async with PayingClient(url, payer) as client:
                got = await client.signed_in_rpc("tasks/get", {"id": task["id"]})
            meta = got.json()["result"]["metadata"]
            assert meta["x402.payment.status"] == "payment-refunded"
            assert meta["x402.payment.refund"]["transaction"] == right["transaction"]
    finally:
        for proc in (server, devnet):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
