"""X402__RATE_LIMIT__…: sane defaults, parsed proxies, one line naming a bad variable."""

from __future__ import annotations

import ipaddress

import pytest

from bindu.errors import SettingsError
from bindu.settings import load_settings


def test_defaults_limit_and_trust_no_proxy():
    limits = load_settings(_env_file=None).x402.rate_limit
    assert limits.trusted_proxies == []
    assert limits.client_burst >= 1 and limits.payer_burst >= 1
    assert limits.smart_wallet_burst >= 1
    assert limits.ipv6_prefix == 64


def test_nested_values_are_read(monkeypatch):
    monkeypatch.setenv("X402__RATE_LIMIT__TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16,fd00::/8")
    monkeypatch.setenv("X402__RATE_LIMIT__CLIENT_BURST", "3")
    monkeypatch.setenv("X402__RATE_LIMIT__SMART_WALLET_BURST", "0")
    limits = load_settings(_env_file=None).x402.rate_limit
    assert limits.trusted_proxies == [
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert limits.client_burst == 3
    assert limits.smart_wallet_burst == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TRUSTED_PROXIES", "10.0.0.1,proxy.example"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("CLIENT_BURST", "0"),
        ("CLIENT_PER_MINUTE", "0"),
        ("PAYER_BURST", "many"),
        ("SMART_WALLET_BURST", "-1"),
        ("IPV6_PREFIX", "129"),
        ("MAX_TRACKED", "1"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, name, value):
    variable = f"X402__RATE_LIMIT__{name}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert message.startswith(variable + ": "), message
    assert "\n" not in message
