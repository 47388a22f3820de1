"""Real servers for tests: in-process uvicorn, or ``bindu serve`` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from bindu.agent import Agent
from bindu.server.app import create_app
from bindu.server.embedded import bind, serving
from bindu.server.services import Service
from bindu.settings import Settings
from bindu.storage.base import Storage
from tests.support.waiting import until

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def inprocess_server(
    settings: Settings,
    agent: Agent,
    *,
    storage: Storage | None = None,
    services: list[Service] | None = None,
) -> AsyncIterator[str]:
    sock = bind()
    port = sock.getsockname()[1]
    settings = settings.model_copy(
        update={"server": settings.server.model_copy(update={"host": "127.0.0.1", "port": port})}
    )
    app = create_app(settings, agent, storage=storage, services=services)
    async with serving(app, sock) as url:
        yield url


def free_port() -> int:
    """A port for a server subprocess (it binds it itself, so a tiny race remains)."""
    with bind() as sock:
        return int(sock.getsockname()[1])


class ServerProcess:
    """``python -m bindu.cli.main serve`` with an environment, killable with SIGKILL."""

    def __init__(self, agent: str, env: dict[str, str], log_path: Path) -> None:
        self.agent = agent
        self.port = free_port()
        self.env = {**os.environ, **env, "SERVER__HOST": "127.0.0.1"}
        self.env["SERVER__PORT"] = str(self.port)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, *, timeout: float = 40.0) -> ServerProcess:
        log = self.log_path.open("ab")
        # Popen returns at once; the wait for readiness below is async.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "bindu.cli.main", "serve", "--agent", self.agent],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        async def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(self.url + "/health")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(healthy, timeout=timeout, interval=0.1, what="server /health")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


async def rpc(
    client: httpx.AsyncClient, url: str, method: str, params: Any = None, **kw: Any
) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        body["params"] = params
    return await client.post(url + "/", json=body, **kw)


def text_message(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "message": {"kind": "message", "role": "user", "parts": [{"kind": "text", "text": text}]},
        **extra,
    }
