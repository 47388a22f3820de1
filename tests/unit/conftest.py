"""Fixtures for the fast tests (also the tests `make mutate` runs, once per mutant)."""

from __future__ import annotations

from collections.abc import Iterator
from unittest import mock

import httpx
import pytest

_TLS = httpx.create_ssl_context()


@pytest.fixture(autouse=True, scope="session")
def one_tls_context() -> Iterator[None]:
    """One TLS context for every httpx client of the session. No unit test opens a TLS
    connection (respx answers in process), yet each client loads the whole CA bundle when
    it is built: the bulk of a paywall test's time, paid again for every mutant."""
    with mock.patch("httpx._transports.default.create_ssl_context", return_value=_TLS):
        yield
