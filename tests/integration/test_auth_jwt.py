"""JWT bearer tokens against a real JWKS: a small HTTP server on loopback publishing keys
generated for this run; a real bindu server checks issuer, audience, expiry, signature."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bindu.examples.echo import agent as echo
from bindu.server.embedded import bind, serving
from tests.support.servers import inprocess_server, rpc, text_message
from tests.support.settings import settings_from_env

ISSUER = "https://issuer.test/"
AUDIENCE = "bindu-tests"


class Jwks:
    """The identity provider's key set, served over HTTP; counts the fetches."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0

    def document(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        return {
            "keys": [
                {**rsa_jwk, "kid": "rsa-1", "use": "sig", "alg": "RS256"},
                {**ec_jwk, "kid": "ec-1", "use": "sig", "alg": "ES256"},
            ]
        }

    def app(self) -> Starlette:
        async def keys(request: Request) -> Response:
            self.fetches += 1
            return JSONResponse(self.document())

        return Starlette(routes=[Route("/jwks.json", keys)])


def claims(sub: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[tuple[Jwks, str]]:
    keys = Jwks()
    async with serving(keys.app(), bind(), lifespan="off") as url:
        yield keys, url + "/jwks.json"


@pytest.fixture(scope="module")
async def server(jwks) -> AsyncIterator[str]:
    _, jwks_url = jwks
    env = {
        "STORAGE__URL": "memory://",
        "AUTH__JWKS_URL": jwks_url,
        "AUTH__ISSUER": ISSUER,
        "AUTH__AUDIENCE": AUDIENCE,
    }
    async with inprocess_server(settings_from_env(env), echo) as url:
        yield url


def token(keys: Jwks, sub: str = "alice", *, kid: str = "rsa-1", **changes: Any) -> str:
    if kid.startswith("ec"):
        return jwt.encode(claims(sub, **changes), keys.ec, algorithm="ES256", headers={"kid": kid})
    return jwt.encode(claims(sub, **changes), keys.rsa, algorithm="RS256", headers={"kid": kid})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_each_subject_owns_its_tasks(server, jwks):
    keys, _ = jwks
    alice, bob = bearer(token(keys, "alice")), bearer(token(keys, "bob", kid="ec-1"))
    async with httpx.AsyncClient(timeout=30) as http:
        sent = await rpc(http, server, "message/send", text_message("hi"), headers=alice)
        task = sent.json()["result"]
        assert task["artifacts"][0]["parts"][0]["text"] == "echo: hi"
        got = await rpc(http, server, "tasks/get", {"id": task["id"]}, headers=alice)
        assert got.json()["result"]["id"] == task["id"]
        theirs = await rpc(http, server, "tasks/get", {"id": task["id"]}, headers=bob)
        assert theirs.json()["error"]["code"] == -32001
        listed = await rpc(http, server, "tasks/list", {}, headers=bob)
        assert listed.json()["result"]["tasks"] == []
        mine = await rpc(http, server, "tasks/list", {}, headers=alice)
        assert [t["id"] for t in mine.json()["result"]["tasks"]] == [task["id"]]
        # Configured accounts and no AUTH__ALLOW_ANONYMOUS: anonymous callers get nothing.
        for method, params in [("message/send", text_message("x")), ("tasks/list", {})]:
            anonymous = await rpc(http, server, method, params)
            assert anonymous.status_code == 401, anonymous.text
            assert anonymous.json()["error"]["code"] == -32030
            assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")


async def test_bad_tokens_get_401(server, jwks):
    keys, _ = jwks
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    forged = jwt.encode(claims("alice"), stranger, algorithm="RS256", headers={"kid": "rsa-1"})
    unsigned = jwt.encode(claims("alice"), None, algorithm="none", headers={"kid": "rsa-1"})
    body, _, signature = token(keys).rpartition(".")
    tampered = body[:-2] + ("AA" if body[-2:] != "AA" else "BB") + "." + signature
    cases = {
        "wrong issuer": token(keys, iss="https://evil.test/"),
        "wrong audience": token(keys, aud="someone-else"),
        "expired": token(keys, exp=now - 3600, iat=now - 7200),
        "bad signature": forged,
        "tampered claims": tampered,
        "unknown key id": token(keys, kid="rsa-9"),
        "alg none": unsigned,
        "no subject": token(keys, sub=None),
        "no expiry": token(keys, exp=None),
        "garbage": "not.a.jwt",
        "oversized": "a" * 10_000,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        for name, value in cases.items():
            response = await rpc(http, server, "tasks/list", {}, headers=bearer(value))
            assert response.status_code == 401, (name, response.text)
            error = response.json()["error"]
            assert error["code"] == -32030 and "Unauthenticated" in error["message"], name


async def test_keys_are_cached_and_unknown_kids_do_not_hammer_the_jwks(server, jwks):
    keys, _ = jwks
    async with httpx.AsyncClient(timeout=30) as http:
        ok = await rpc(http, server, "tasks/list", {}, headers=bearer(token(keys)))
        assert ok.status_code == 200
        before = keys.fetches
        for _ in range(5):
            assert (
                await rpc(http, server, "tasks/list", {}, headers=bearer(token(keys)))
            ).is_success
        assert keys.fetches == before  # cached
        for i in range(5):
            forged = bearer(token(keys, kid=f"rotated-{i}"))
            assert (await rpc(http, server, "tasks/list", {}, headers=forged)).status_code == 401
        assert keys.fetches <= before + 1  # one refetch at most per cooldown


async def test_unreachable_jwks_is_503_not_500():
    port = bind().getsockname()[1]  # bound, never listening: connections are refused
    env = {
        "STORAGE__URL": "memory://",
        "AUTH__JWKS_URL": f"http://127.0.0.1:{port}/jwks.json",
        "AUTH__ISSUER": ISSUER,
        "AUTH__AUDIENCE": AUDIENCE,
        "AUTH__JWKS_TIMEOUT_SECONDS": "2",
    }
    keys = Jwks()
    async with (
        inprocess_server(settings_from_env(env), echo) as url,
        httpx.AsyncClient(timeout=30) as http,
    ):
        response = await rpc(http, url, "tasks/list", {}, headers=bearer(token(keys)))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == -32031
        # The server is fine otherwise.
        assert (await http.get(url + "/health")).status_code == 200
