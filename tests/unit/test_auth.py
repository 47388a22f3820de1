"""Authentication pieces without a server: API keys, used sign-in nonces, who owns what."""

from __future__ import annotations

import pytest

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.errors import SettingsError
from bindu.server.auth.api_keys import ApiKeys, key_digest
from bindu.server.auth.principal import (
    AuthFailed,
    Principal,
    may_access,
    owner_of_new_task,
    wallet,
)
from bindu.server.auth.siwx import UsedNonces
from bindu.settings import load_settings

ALICE = Principal("key:alice", "apiKey")
PAYER = "0xAbCdEf0000000000000000000000000000000001"


def test_api_keys_match_their_digest_only():
    keys = ApiKeys({"alice": key_digest("sesame"), "bob": key_digest("other")})
    assert keys.authenticate("sesame") == ALICE
    assert keys.authenticate("other").id == "key:bob"
    for wrong in ("Sesame", "sesame ", "", "x" * 600, "\ud800", key_digest("sesame")):
        with pytest.raises(AuthFailed):
            keys.authenticate(wrong)
    assert not ApiKeys({})


def test_used_nonces_refuse_a_replay_until_they_expire():
    nonces = UsedNonces(ttl_seconds=10, limit=3)
    assert nonces.use("a", now=0) and not nonces.use("a", now=5)
    assert nonces.use("a", now=11)  # expired: forgotten
    for n in ("b", "c", "d"):
        assert nonces.use(n, now=12)
    assert len(nonces._seen) <= 3  # bounded: the oldest go first


def task(owner: str | None) -> Task:
    return Task(status=TaskStatus(state=TaskState.COMPLETED), owner=owner)


def test_only_the_owner_uses_an_owned_task_and_anyone_with_the_id_an_unowned_one():
    assert may_access(task("key:alice"), ALICE)
    assert not may_access(task("key:alice"), Principal("key:bob", "apiKey"))
    assert not may_access(task("key:alice"), None)
    assert not may_access(task(wallet(PAYER)), ALICE)
    assert may_access(task(wallet(PAYER)), Principal(wallet("0x" + PAYER[2:].upper()), "siwx"))
    assert may_access(task(None), None) and may_access(task(None), ALICE)


def test_a_new_task_is_owned_by_the_caller_else_the_payer_else_nobody():
    assert owner_of_new_task(ALICE, PAYER) == "key:alice"
    assert owner_of_new_task(None, PAYER) == "wallet:" + PAYER.lower()
    assert owner_of_new_task(None, None) is None


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUTH__API_KEYS": "{nope"}, "AUTH__API_KEYS"),
        ({"AUTH__API_KEYS": '{"alice": "not-a-digest"}'}, "AUTH__API_KEYS"),
        ({"AUTH__API_KEYS": '{"a b": "' + "0" * 64 + '"}'}, "AUTH__API_KEYS"),
        ({"AUTH__API_KEYS": '["x"]'}, "AUTH__API_KEYS"),
        ({"AUTH__JWKS_URL": "file:///etc/keys"}, "AUTH__JWKS_URL"),
        ({"AUTH__JWKS_URL": "https://idp.test/jwks"}, "AUTH__ISSUER"),
        ({"AUTH__JWKS_URL": "https://idp.test/jwks", "AUTH__ISSUER": "i"}, "AUTH__AUDIENCE"),
        ({"AUTH__ISSUER": "i"}, "AUTH__JWKS_URL"),
        ({"AUTH__JWT_ALGORITHMS": "HS256"}, "AUTH__JWT_ALGORITHMS"),
        ({"AUTH__JWT_ALGORITHMS": "none"}, "AUTH__JWT_ALGORITHMS"),
        ({"AUTH__JWKS_TIMEOUT_SECONDS": "0"}, "AUTH__JWKS_TIMEOUT_SECONDS"),
        ({"AUTH__SIWX_MAX_AGE_SECONDS": "99999"}, "AUTH__SIWX_MAX_AGE_SECONDS"),
        ({"AUTH__ALLOW_ANONYMOUS": "maybe"}, "AUTH__ALLOW_ANONYMOUS"),
        ({"SERVER__URL": "agent.example.com"}, "SERVER__URL"),
        ({"SERVER__URL": "https://user:pw@agent.example.com"}, "SERVER__URL"),
    ],
)
def test_bad_auth_setting_names_the_variable(monkeypatch, env, variable):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert message.startswith(variable + ": "), message
    assert "\n" not in message


def test_anonymous_access_defaults_follow_the_configured_accounts(monkeypatch):
    assert load_settings(_env_file=None).auth.anonymous_allowed
    monkeypatch.setenv("AUTH__API_KEYS", '{"alice": "' + key_digest("k") + '"}')
    keyed = load_settings(_env_file=None).auth
    assert keyed.configured and not keyed.anonymous_allowed
    monkeypatch.setenv("AUTH__ALLOW_ANONYMOUS", "true")
    assert load_settings(_env_file=None).auth.anonymous_allowed


async def test_sign_in_origin_is_the_public_urls_origin_even_behind_a_path():
    from bindu.server.auth.siwx import SignIn

    sign_in = SignIn("https://agents.example.com/bindu/", "eip155:8453", 300)
    assert sign_in.origin == "https://agents.example.com"
    declared = (await sign_in.declaration())["sign-in-with-x"]
    assert declared["info"]["domain"] == "agents.example.com"
    assert declared["info"]["uri"] == "https://agents.example.com/bindu/"
    assert "nonce" not in declared["info"] and "issuedAt" not in declared["info"]
    body, headers = await sign_in.challenge("sign in")
    assert body["accepts"] == [] and body["extensions"]["sign-in-with-x"]["info"]["nonce"]
    assert "PAYMENT-REQUIRED" in headers
