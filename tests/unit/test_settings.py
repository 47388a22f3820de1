import subprocess
import sys

import pytest

from bindu.errors import SettingsError
from bindu.settings import load_settings

ADDR = "0x" + "ab" * 20


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"STORAGE__URL": "mysql://x"}, "STORAGE__URL"),
        ({"X402__PAY_TO": "0x12"}, "X402__PAY_TO"),
        ({"X402__PAY_TO": ADDR}, "X402__FACILITATOR_URL"),
        ({"X402__PAY_TO": ADDR, "X402__FACILITATOR_URL": "http://f"}, "X402__ASSET"),
        ({"X402__NETWORK": "base"}, "X402__NETWORK"),
        ({"X402__AMOUNT": "-3"}, "X402__AMOUNT"),
        ({"SERVER__AGENT_TIMEOUT_SECONDS": "0"}, "SERVER__AGENT_TIMEOUT_SECONDS"),
        ({"SERVER__AGENT_IDEMPOTENT": "maybe"}, "SERVER__AGENT_IDEMPOTENT"),
        ({"X402__LATE_ANSWER_SECONDS": "-1"}, "X402__LATE_ANSWER_SECONDS"),
        ({"X402__RPC_URLS": "{nope"}, "X402__RPC_URLS"),
        ({"X402__RPC_URLS": '{"eip155:1": "ftp://x"}'}, "X402__RPC_URLS"),
        (
            {"X402__RECONCILIATION__INTERVAL_SECONDS": "soon"},
            "X402__RECONCILIATION__INTERVAL_SECONDS",
        ),
        ({"X402__RECONCILIATION__POLICY": "refund"}, "X402__RECONCILIATION__POLICY"),
        ({"X402__PROTECTED_METHODS": "tasks/get"}, "X402__PROTECTED_METHODS"),
        ({"SERVER__PORT": "99999"}, "SERVER__PORT"),
        ({"SERVER__MAX_JSON_DEPTH": "1"}, "SERVER__MAX_JSON_DEPTH"),
        ({"X402__PROTECTED_METHODS": ""}, "X402__PROTECTED_METHODS"),
        ({"METRICS__TOKEN": "short"}, "METRICS__TOKEN"),
        ({"METRICS__TOKEN": "sixteen chars with spaces"}, "METRICS__TOKEN"),
        ({"METRICS__PORT": "0"}, "METRICS__PORT"),
        ({"METRICS__REFRESH_SECONDS": "0"}, "METRICS__REFRESH_SECONDS"),
        ({"STORAGE__SCHEMA": "Drop Table"}, "STORAGE__SCHEMA"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch, env, variable):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(variable + ": "), message
    assert "\n" not in message


def test_nested_settings_are_read(monkeypatch):
    monkeypatch.setenv("X402__PAY_TO", ADDR)
    monkeypatch.setenv("X402__ASSET", ADDR)
    monkeypatch.setenv("X402__FACILITATOR_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("X402__NETWORK", "eip155:31337")
    monkeypatch.setenv("X402__RPC_URLS", '{"eip155:31337": "http://127.0.0.1:8545"}')
    monkeypatch.setenv("X402__RECONCILIATION__POLICY", "fulfill")
    s = load_settings()
    assert s.x402.enabled
    assert s.x402.rpc_urls == {"eip155:31337": "http://127.0.0.1:8545"}
    assert s.x402.reconciliation.policy == "fulfill"


PAID = {"X402__PAY_TO": ADDR, "X402__ASSET": ADDR, "X402__FACILITATOR_URL": "http://f"}


@pytest.mark.parametrize(
    "rpc_urls",
    [None, "{}", '{"eip155:1": "http://127.0.0.1:8545"}'],
    ids=["unset", "empty", "other-network"],
)
def test_fulfill_without_chain_proof_is_refused(monkeypatch, rpc_urls):
    for key, value in {**PAID, "X402__RECONCILIATION__POLICY": "fulfill"}.items():
        monkeypatch.setenv(key, value)
    if rpc_urls is not None:
        monkeypatch.setenv("X402__RPC_URLS", rpc_urls)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("X402__RECONCILIATION__POLICY: fulfill needs chain proof"), message
    assert "X402__RPC_URLS for eip155:84532" in message
    assert "\n" not in message


def test_record_policy_needs_no_chain(monkeypatch):
    for key, value in PAID.items():
        monkeypatch.setenv(key, value)
    assert load_settings().x402.reconciliation.policy == "record"


def test_defaults_are_sqlite_and_unpaid(monkeypatch):
    s = load_settings()
    assert s.storage.url.startswith("sqlite:///")
    assert not s.x402.enabled


def test_serve_stops_with_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "X402__PAY_TO": "nope", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", "bindu.examples.echo:agent"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["bindu: X402__PAY_TO: must be a 0x-prefixed 20-byte hex address"]
