"""API keys, kept in settings only as the SHA-256 of each key."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from bindu.server.auth.principal import AuthFailed, Principal

HEADER = "X-API-Key"
# Longer than any key worth hashing; refused before hashing.
MAX_KEY_CHARS = 512


def key_digest(key: str) -> str:
    """What ``AUTH__API_KEYS`` stores for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class ApiKeys:
    def __init__(self, digests: Mapping[str, str]) -> None:
        self._digests = [(name, bytes.fromhex(d)) for name, d in digests.items()]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def authenticate(self, key: str) -> Principal:
        if not key or len(key) > MAX_KEY_CHARS:
            raise AuthFailed("invalid API key")
        try:
            presented = hashlib.sha256(key.encode("utf-8")).digest()
        except UnicodeEncodeError:
            raise AuthFailed("invalid API key") from None
        found: str | None = None
        # Every entry is compared, in constant time, so timing tells nothing about which.
        for name, digest in self._digests:
            if hmac.compare_digest(presented, digest):
                found = name
        if found is None:
            raise AuthFailed("invalid API key")
        return Principal(f"key:{found}", "apiKey")
