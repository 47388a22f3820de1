"""Shared fixtures. Each fixture here is used across several test folders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bindu.devnet import Devnet, FaultSwitch
from bindu.metrics import AGENT_RUNS
from bindu.payments.evm_logs import TRANSFER_TOPIC, address_topic


@pytest.fixture(scope="session")
async def devnet() -> AsyncIterator[Devnet]:
    """One running devnet (anvil, token, SDK facilitator over HTTP) for the whole session.

    Tests share it, so each uses fresh payers (`await devnet.new_payer(...)`) and resets the
    faults it sets (`faults_reset`). Fails loudly, never skips, when anvil is missing.
    """
    async with Devnet() as running:
        yield running
        await _assert_no_unpaid_work(running)


async def _assert_no_unpaid_work(devnet: Devnet) -> None:
    """Over the whole session: paid agent runs (in-process servers) never exceed the
    settled payments the chain shows (Transfer events into the payee)."""
    transfers = await devnet.rpc.call(
        "eth_getLogs",
        {
            "address": devnet.info.token_address,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": [TRANSFER_TOPIC, None, address_topic(devnet.info.pay_to)],
        },
    )
    paid_runs = sum(
        AGENT_RUNS.labels(outcome, "true")._value.get() for outcome in ("ok", "error", "timeout")
    )
    assert paid_runs <= len(transfers), f"{paid_runs} paid agent runs, {len(transfers)} settled"


@pytest.fixture
def faults_reset(devnet: Devnet) -> Iterator[FaultSwitch]:
    """The devnet's fault switch, all off before the test and turned off again after it."""
    devnet.faults.reset()
    yield devnet.faults
    devnet.faults.reset()
