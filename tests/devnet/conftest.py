"""Fixtures for the devnet suite (the session `devnet` itself lives in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402.http import FacilitatorConfig, HTTPFacilitatorClient

from bindu.devnet import Devnet

PAYER_TOKENS = 1_000_000  # atomic units: 100 payments of 10000


@pytest.fixture
async def facilitator(devnet: Devnet) -> AsyncIterator[HTTPFacilitatorClient]:
    """The SDK's HTTP client for the devnet facilitator, as a resource server uses it."""
    client = HTTPFacilitatorClient(FacilitatorConfig(url=devnet.info.facilitator_url, timeout=30))
    yield client
    await client.aclose()


@pytest.fixture
async def payer(devnet: Devnet) -> LocalAccount:
    return await devnet.new_payer(PAYER_TOKENS)


@pytest.fixture
def pay_to() -> str:
    """A fresh payee per test, so balance assertions see only this test's transfers."""
    address: str = Account.create().address
    return address


@pytest.fixture
async def held_mining(devnet: Devnet) -> AsyncIterator[None]:
    """Mining held for the test; released afterwards even if the test fails."""
    await devnet.hold_mining()
    try:
        yield
    finally:
        await devnet.release_mining()
