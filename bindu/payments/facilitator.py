"""The one long-lived facilitator client of a server (closed on shutdown)."""

from __future__ import annotations

from x402.http import FacilitatorConfig, HTTPFacilitatorClient

from bindu.errors import SettingsError
from bindu.settings import X402Settings


def make_facilitator_client(settings: X402Settings) -> HTTPFacilitatorClient:
    # The SDK's default timeout is 90 s; our own deadlines (settle/verify timeouts) are the
    # real bound, the client's only stops a hung socket from outliving them.
    timeout = max(settings.settle_timeout_seconds, settings.verify_timeout_seconds) + 5.0
    if settings.facilitator_url is None:
        raise SettingsError("X402__FACILITATOR_URL: required when X402__PAY_TO is set")
    return HTTPFacilitatorClient(FacilitatorConfig(url=settings.facilitator_url, timeout=timeout))
