"""One request's credentials to a principal: an API key, a JWT bearer token or a
sign-in-with-x header (at most one of them), or none (an anonymous caller)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bindu.server.auth.api_keys import HEADER as API_KEY_HEADER
from bindu.server.auth.api_keys import ApiKeys
from bindu.server.auth.bearer import JwtVerifier
from bindu.server.auth.principal import AuthFailed, Caller, Principal
from bindu.server.auth.siwx import HEADER as SIWX_HEADER
from bindu.server.auth.siwx import SignIn
from bindu.settings import Settings


class Authenticator:
    def __init__(self, settings: Settings, resource_url: str) -> None:
        auth = settings.auth
        self.settings = auth
        self.api_keys = ApiKeys(auth.api_keys)
        self.jwt = JwtVerifier(auth) if auth.jwt_enabled else None
        self.sign_in = (
            SignIn(resource_url, settings.x402.network, auth.siwx_max_age_seconds)
            if auth.siwx and settings.x402.enabled
            else None
        )

    async def authenticate(self, headers: Mapping[str, str]) -> Caller:
        key = headers.get(API_KEY_HEADER)
        authorization = headers.get("authorization")
        siwx = headers.get(SIWX_HEADER)
        sent = [h for h in (key, authorization, siwx) if h is not None]
        if not sent:
            return None
        if len(sent) > 1:
            raise AuthFailed("send one credential: an API key, a bearer token or a sign-in")
        if key is not None:
            if not self.api_keys:
                raise AuthFailed("API keys are not accepted here")
            return self.api_keys.authenticate(key)
        if siwx is not None:
            if self.sign_in is None:
                raise AuthFailed("sign-in-with-x is not accepted here")
            return await self.sign_in.authenticate(siwx)
        return await self._bearer(authorization or "")

    async def _bearer(self, authorization: str) -> Principal:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("Authorization must be 'Bearer <JWT>'")
        if self.jwt is None:
            raise AuthFailed("bearer tokens are not accepted here")
        return await self.jwt.authenticate(token.strip())

    def www_authenticate(self) -> str | None:
        """The WWW-Authenticate value naming what a 401 caller could send, if anything."""
        offered = []
        if self.jwt is not None:
            offered.append('Bearer realm="bindu"')
        if self.api_keys:
            offered.append(f'ApiKey realm="bindu", header="{API_KEY_HEADER}"')
        if self.sign_in is not None:
            offered.append(f'SIWx realm="bindu", header="{SIWX_HEADER}"')
        return ", ".join(offered) or None

    def card_security(self) -> dict[str, Any]:
        """``securitySchemes`` and ``security`` for the agent card (A2A, OpenAPI style)."""
        schemes: dict[str, Any] = {}
        if self.api_keys:
            schemes["apiKey"] = {
                "type": "apiKey",
                "in": "header",
                "name": API_KEY_HEADER,
                "description": "An API key issued by the operator.",
            }
        if self.jwt is not None:
            schemes["bearer"] = {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    f"A JWT from issuer {self.settings.issuer} for audience "
                    f"{self.settings.audience}, signed with a key of its JWKS."
                ),
            }
        if self.sign_in is not None:
            schemes["siwx"] = {
                "type": "apiKey",
                "in": "header",
                "name": SIWX_HEADER,
                "description": (
                    "x402 sign-in-with-x: the wallet that paid for a task signs the challenge "
                    "of a 402 (x402.extensions['sign-in-with-x']) to list and read its tasks."
                ),
            }
        if not schemes:
            return {}
        security: list[dict[str, list[str]]] = [{name: []} for name in schemes]
        if self.settings.anonymous_allowed:
            security.append({})  # OpenAPI's "no credentials" alternative
        return {"securitySchemes": schemes, "security": security}
