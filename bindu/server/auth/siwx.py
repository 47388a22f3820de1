"""Payers sign in with the wallet that paid: the x402 SDK's sign-in-with-x extension.

The SDK's pieces do the work: its resource-server extension writes the challenge (domain,
uri, nonce, issuedAt, expirationTime) into a 402 ``PaymentRequired.extensions`` with no
``accepts`` (the SDK's "auth-only" shape), its client signs that challenge and retries with
the ``SIGN-IN-WITH-X`` header, and its ``parse``/``validate``/``verify`` functions check the
header here. What bindu adds: the wallet becomes a principal (``wallet:0x…``) that owns the
tasks it paid for, each signed header is used once, and only the server's own networks are
accepted.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlparse

from x402 import x402ResourceServer
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    CreateSIWxResourceServerExtensionOptions,
    DeclareSIWxOptions,
    InMemorySIWxStorage,
    SIWxValidationOptions,
    create_siwx_resource_server_extension,
    declare_siwx_extension,
    normalize_configured_origin,
    parse_siwx_header,
    validate_siwx_message,
    verify_siwx_signature,
)
from x402.http.constants import PAYMENT_REQUIRED_HEADER
from x402.http.utils import encode_payment_required_header
from x402.schemas import ResourceInfo

from bindu.server.auth.principal import AuthFailed, Principal, wallet

HEADER = SIGN_IN_WITH_X.upper()
STATEMENT = "Sign in to read the tasks this wallet paid for."
# A signed header is a few hundred bytes; anything far larger is refused unparsed.
MAX_HEADER_CHARS = 8192
# Used nonces remembered at most (each for the sign-in's max age); the oldest go first.
MAX_REMEMBERED_NONCES = 100_000
# Checking a signature costs ~25 ms of CPU (the siwe library parses the EIP-4361 message
# with a pure-Python ABNF parser): done off the event loop, this many at a time.
MAX_CONCURRENT_VERIFICATIONS = 2


class UsedNonces:
    """Nonces of accepted sign-ins until they could no longer validate (in this process)."""

    def __init__(self, ttl_seconds: float, limit: int = MAX_REMEMBERED_NONCES) -> None:
        self._ttl = ttl_seconds
        self._limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def use(self, nonce: str, now: float | None = None) -> bool:
        """Record ``nonce``; False if it was already used."""
        now = time.monotonic() if now is None else now
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now and len(self._seen) < self._limit:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now + self._ttl
        return True


class SignIn:
    def __init__(self, resource_url: str, network: str, max_age_seconds: int) -> None:
        # The origin alone: SERVER__URL may carry a path (a server behind a proxy prefix).
        url = urlparse(resource_url)
        self.origin = normalize_configured_origin(f"{url.scheme}://{url.netloc}")
        self._networks = {network}
        self._max_age_seconds = max_age_seconds
        self._resource = ResourceInfo(
            url=resource_url,
            description="A2A tasks of a signed-in wallet",
            mime_type="application/json",
        )
        self._options = DeclareSIWxOptions(
            statement=STATEMENT, network=[network], expiration_seconds=max_age_seconds
        )
        # No facilitator: this server only writes sign-in challenges.
        self._extension = create_siwx_resource_server_extension(
            CreateSIWxResourceServerExtensionOptions(
                origin=self.origin, storage=InMemorySIWxStorage()
            )
        )
        self._server = x402ResourceServer()
        self._server.register_extension(self._extension)
        self._nonces = UsedNonces(ttl_seconds=max_age_seconds + 60)
        self._verifying = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)

    async def challenge(self, error: str) -> tuple[dict[str, Any], dict[str, str]]:
        """A 402 body and headers asking the caller to sign in (fresh nonce each time)."""
        required = await self._server.create_payment_required_response(
            [], self._resource, error, extensions=declare_siwx_extension(self._options)
        )
        body = required.model_dump(mode="json", by_alias=True, exclude_none=True)
        return body, {PAYMENT_REQUIRED_HEADER: encode_payment_required_header(required)}

    async def declaration(self) -> dict[str, Any]:
        """The extension as the agent card shows it: the challenge without the fields the
        SDK regenerates for every 402 (nonce, issuedAt, expirationTime)."""
        required = await self._server.create_payment_required_response(
            [], self._resource, extensions=declare_siwx_extension(self._options)
        )
        full = dict((required.extensions or {})[SIGN_IN_WITH_X])
        dynamic = set(getattr(self._extension, "dynamic_info_fields", []))
        full["info"] = {k: v for k, v in full["info"].items() if k not in dynamic}
        return {SIGN_IN_WITH_X: full}

    async def authenticate(self, header: str) -> Principal:
        if len(header) > MAX_HEADER_CHARS:
            raise AuthFailed("sign-in-with-x: header too large")
        try:
            payload = parse_siwx_header(header)
        except (ValueError, UnicodeDecodeError) as exc:
            raise AuthFailed(f"sign-in-with-x: {str(exc)[:200]}") from None
        if payload.chain_id not in self._networks:
            raise AuthFailed(f"sign-in-with-x: chain must be one of {sorted(self._networks)}")
        validation = await validate_siwx_message(
            payload, self.origin, SIWxValidationOptions(max_age=self._max_age_seconds * 1000)
        )
        if not validation.is_valid:
            raise AuthFailed(f"sign-in-with-x: {validation.invalid_message}")
        async with self._verifying:
            # The SDK's check is a coroutine that never awaits: run it on a loop of its own
            # in a worker thread, so other requests keep being served meanwhile.
            verification = await asyncio.to_thread(asyncio.run, verify_siwx_signature(payload))
        if not verification.is_valid or not verification.payer:
            raise AuthFailed(f"sign-in-with-x: {verification.invalid_message or 'bad signature'}")
        # Checked last, so a forged header cannot burn someone else's nonce.
        if not self._nonces.use(f"{verification.payer.lower()} {payload.nonce}"):
            raise AuthFailed("sign-in-with-x: this signed message was already used; sign a new one")
        return Principal(wallet(verification.payer), "siwx")
