"""JWT bearer tokens, verified against the operator's JWKS (issuer and audience pinned)."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
from jwt import PyJWKClient, PyJWKClientConnectionError, PyJWKClientError

from bindu.server.auth.principal import AuthFailed, AuthUnavailable, Principal
from bindu.settings import AuthSettings

# Bigger tokens are refused before any parsing.
MAX_TOKEN_CHARS = 8192
# Unknown key ids trigger at most one JWKS refetch per this many seconds (PyJWKClient's
# cooldown), so forged kids cannot hammer the identity provider.
REFETCH_COOLDOWN_SECONDS = 30.0


class JwtVerifier:
    def __init__(self, settings: AuthSettings) -> None:
        if settings.jwks_url is None or not settings.issuer or not settings.audience:
            raise ValueError("JWT needs AUTH__JWKS_URL, AUTH__ISSUER and AUTH__AUDIENCE")
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._algorithms = list(settings.jwt_algorithms)
        self._leeway = settings.leeway_seconds
        # The JWK set is cached for jwks_cache_seconds; fetches follow no redirects.
        self._jwks = PyJWKClient(
            settings.jwks_url,
            cache_jwk_set=True,
            lifespan=settings.jwks_cache_seconds,
            timeout=settings.jwks_timeout_seconds,
            cooldown_duration=REFETCH_COOLDOWN_SECONDS,
        )

    async def authenticate(self, token: str) -> Principal:
        if not token or len(token) > MAX_TOKEN_CHARS:
            raise AuthFailed("invalid bearer token")
        # PyJWKClient is blocking (urllib): off the event loop, bounded by its timeout.
        claims = await asyncio.to_thread(self._verify, token)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise AuthFailed("invalid bearer token: sub must be a non-empty string")
        return Principal(f"jwt:{subject}", "bearer")

    def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in self._algorithms:
                raise AuthFailed(
                    f"invalid bearer token: algorithm must be one of {self._algorithms}"
                )
            key = self._jwks.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except PyJWKClientConnectionError as exc:
            raise AuthUnavailable(f"JWKS unreachable: {exc}") from None
        except (PyJWKClientError, jwt.PyJWTError) as exc:
            raise AuthFailed(f"invalid bearer token: {exc}") from None
        except (ValueError, TypeError) as exc:  # a malformed key or token the library let by
            raise AuthFailed(f"invalid bearer token: {exc}") from None
        return claims
