"""Operators' settings against the real process: an empty X402__PROTECTED_METHODS stops
start-up (must-hold 5 of issue 10), /metrics is served only where the operator says, and the
payment gauges are not recomputed per scrape."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import ServerProcess, free_port
from tests.support.waiting import until

ADDR = "0x" + "ab" * 20
TOKEN = "a-metrics-token-of-some-length"


def serve_once(tmp_path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **extra}
    return subprocess.run(
        [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", "bindu.examples.echo:agent"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("value", ["", " , "])
def test_empty_protected_methods_stops_start_up(tmp_path, value):
    paid = {
        "X402__PAY_TO": ADDR,
        "X402__ASSET": ADDR,
        "X402__FACILITATOR_URL": "http://127.0.0.1:9",
        "X402__PROTECTED_METHODS": value,
    }
    proc = serve_once(tmp_path, paid)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "bindu: X402__PROTECTED_METHODS: must name at least one method (message/send);"
        " unset it for the default"
    ]


@contextmanager
def socket_listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_taken_metrics_port_stops_start_up(tmp_path):
    with socket_listening() as port:
        proc = serve_once(
            tmp_path,
            {"STORAGE__URL": f"sqlite:///{tmp_path}/b.db", "METRICS__PORT": str(port)},
        )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"bindu: METRICS__PORT: cannot listen on 127.0.0.1:{port}: ")


def sample(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                return float(s.value)
    raise AssertionError(f"{name} not in the scrape")


async def start(tmp_path, env: dict[str, str]) -> ServerProcess:
    env = {"STORAGE__URL": f"sqlite:///{tmp_path}/bindu.db", **env}
    return await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "s.log").start()


async def test_metrics_are_not_served_by_default(tmp_path):
    proc = await start(tmp_path, {})
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(proc.url + "/metrics")).status_code == 404
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get(proc.url + "/metrics", headers=bearer)).status_code == 404
        assert "metrics: not served (set METRICS__TOKEN" in proc.log()
    finally:
        proc.stop()


async def test_metrics_token_on_the_main_app(tmp_path):
    proc = await start(tmp_path, {"METRICS__TOKEN": TOKEN, "METRICS__REFRESH_SECONDS": "3600"})
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            url = proc.url + "/metrics"
            assert (await http.get(url)).status_code == 401
            wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
            assert (await http.get(url, headers=wrong)).status_code == 401
            assert (await http.get(url, headers={"Authorization": TOKEN})).status_code == 401
            good = {"Authorization": f"Bearer {TOKEN}"}

            async def refreshed() -> str | None:
                reply = await http.get(url, headers=good)
                assert reply.status_code == 200
                text = reply.text
                return text if sample(text, "bindu_payment_gauge_refreshes_total") >= 1 else None

            await until(refreshed, timeout=10, what="first gauge refresh")
            # Ten scrapes, no GROUP BY: the gauges keep the value of the one refresh.
            for _ in range(10):
                text = (await http.get(url, headers=good)).text
                assert sample(text, "bindu_payment_gauge_refreshes_total") == 1
                assert sample(text, "bindu_payments") == 0
    finally:
        proc.stop()


async def test_metrics_on_a_listener_of_their_own(tmp_path):
    port = free_port()
    env = {"METRICS__PORT": str(port), "METRICS__TOKEN": TOKEN}
    proc = await start(tmp_path, env)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            # Not on the main app, even with the token.
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            assert (await http.get(proc.url + "/metrics", headers=bearer)).status_code == 404
            own = f"http://127.0.0.1:{port}/metrics"
            assert (await http.get(own)).status_code == 401
            reply = await http.get(own, headers=bearer)
            assert reply.status_code == 200
            assert "bindu_tasks_total" in reply.text
            # The listener serves metrics only.
            assert (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 404
        assert f"metrics: served on http://127.0.0.1:{port}/metrics (a bearer token)" in proc.log()
    finally:
        proc.stop()
