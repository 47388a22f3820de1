"""PUSH__ and OUTBOX__ settings: read from the environment, a bad value named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from bindu.errors import SettingsError
from bindu.settings import load_settings
from bindu.signing import PushSigner


def _pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_push_and_outbox_settings_are_read(monkeypatch, tmp_path: Path) -> None:
    key_file = tmp_path / "push.pem"
    key_file.write_bytes(_pem(ec.generate_private_key(ec.SECP256R1())))
    monkeypatch.setenv("PUSH__ALLOWED_HOSTS", " Hooks.Example.com., [::1] ,127.0.0.1")
    monkeypatch.setenv("PUSH__SIGNING_KEY_FILE", str(key_file))
    monkeypatch.setenv("OUTBOX__MAX_ATTEMPTS", "7")
    settings = load_settings(_env_file=None)
    assert settings.push.allowed_hosts == ["hooks.example.com", "::1", "127.0.0.1"]
    assert settings.outbox.max_attempts == 7
    # The same key across restarts and replicas: one kid.
    first = PushSigner.from_settings(str(key_file), issuer="http://a/")
    second = PushSigner.from_settings(str(key_file), issuer="http://a/")
    assert first.kid == second.kid and first.jwks() == second.jwks()
    assert "d" not in first.jwks()["keys"][0]  # the public half only


def test_defaults_allow_no_internal_host_and_generate_a_key(monkeypatch) -> None:
    for name in ("PUSH__ALLOWED_HOSTS", "PUSH__SIGNING_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.push.allowed_hosts == [] and settings.push.signing_key_file is None


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"PUSH__ALLOWED_HOSTS": "ok.example, bad host"}, "PUSH__ALLOWED_HOSTS", "not a host"),
        ({"PUSH__SIGNING_KEY_FILE": "/nonexistent/key.pem"}, "PUSH__SIGNING_KEY_FILE", "cannot"),
        ({"PUSH__TIMEOUT_SECONDS": "0"}, "PUSH__TIMEOUT_SECONDS", "greater than 0"),
        ({"OUTBOX__MAX_ATTEMPTS": "none"}, "OUTBOX__MAX_ATTEMPTS", "integer"),
    ],
)
def test_bad_push_setting_names_the_variable(monkeypatch, env, variable, words) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert message.startswith(variable + ": ") and words in message, message
    assert "\n" not in message


@pytest.mark.parametrize("content", ["rsa", "garbage"])
def test_a_key_file_that_is_not_p256_is_refused(monkeypatch, tmp_path: Path, content) -> None:
    key_file = tmp_path / "push.pem"
    if content == "rsa":
        key_file.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    else:
        key_file.write_text("not a key")
    monkeypatch.setenv("PUSH__SIGNING_KEY_FILE", str(key_file))
    with pytest.raises(SettingsError, match=r"^PUSH__SIGNING_KEY_FILE: .*(P-256|PEM)"):
        load_settings(_env_file=None)
