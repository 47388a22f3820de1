"""Shared fixtures. Each fixture here is used across several test folders."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from bindu.devnet import Devnet, FaultSwitch


@pytest.fixture(scope="session")
async def devnet() -> AsyncIterator[Devnet]:
    """One running devnet (anvil, token, SDK facilitator over HTTP) for the whole session.

    Tests share it, so each uses fresh payers (`await devnet.new_payer(...)`) and resets the
    faults it sets (`faults_reset`). Fails loudly, never skips, when anvil is missing.
    """
    async with Devnet() as running:
        yield running


@pytest.fixture
def faults_reset(devnet: Devnet) -> Iterator[FaultSwitch]:
    """The devnet's fault switch, all off before the test and turned off again after it."""
    devnet.faults.reset()
    yield devnet.faults
    devnet.faults.reset()
