"""Finding, starting and stopping anvil."""

from __future__ import annotations

import httpx
import pytest

from bindu.devnet import anvil as anvil_module
from bindu.devnet.anvil import Anvil, find_anvil, platform_package
from bindu.devnet.errors import DevnetError


@pytest.mark.parametrize(
    ("os_name", "machine", "package"),
    [
        ("linux", "x86_64", "@foundry-rs/anvil-linux-amd64"),
        ("linux", "aarch64", "@foundry-rs/anvil-linux-arm64"),
        ("darwin", "arm64", "@foundry-rs/anvil-darwin-arm64"),
        ("darwin", "x86_64", "@foundry-rs/anvil-darwin-amd64"),
    ],
)
def test_platform_package(monkeypatch, os_name, machine, package):
    monkeypatch.setattr(anvil_module.sys, "platform", os_name)
    monkeypatch.setattr(anvil_module.platform, "machine", lambda: machine)
    assert platform_package() == package


def test_env_override_must_be_executable(monkeypatch, tmp_path):
    monkeypatch.setenv("BINDU_ANVIL", str(tmp_path / "nope"))
    with pytest.raises(DevnetError, match="BINDU_ANVIL"):
        find_anvil()


def test_missing_binary_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.delenv("BINDU_ANVIL", raising=False)
    monkeypatch.setattr(anvil_module, "_search_roots", lambda: [tmp_path])
    with pytest.raises(DevnetError, match=r"`make` or `npm ci --ignore-scripts`"):
        find_anvil()


def test_found_under_node_modules(monkeypatch):
    monkeypatch.delenv("BINDU_ANVIL", raising=False)
    path = find_anvil()
    assert path.as_posix().endswith(f"node_modules/{platform_package()}/bin/anvil")


@pytest.mark.devnet
async def test_start_answers_then_stop_frees_the_port():
    node = Anvil(chain_id=4242)
    async with node:
        url = node.rpc_url
        async with httpx.AsyncClient() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
            assert (await http.post(url, json=body)).json()["result"] == hex(4242)
            body["method"] = "eth_accounts"  # no well-known dev keys
            assert (await http.post(url, json=body)).json()["result"] == []
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.post(url, json=body)


@pytest.mark.devnet
async def test_a_binary_that_exits_is_reported(tmp_path):
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\necho 'bad flag' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(DevnetError, match=r"exited with code 3: bad flag"):
        await Anvil(binary=fake).start()
