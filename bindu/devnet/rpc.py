"""A minimal async JSON-RPC client for the local chain.

Plain httpx instead of web3's async provider: the devnet needs a dozen methods (several of them
anvil-only), and keeping the wire format visible makes the fixtures easy to reason about.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx

from bindu.devnet.errors import DevnetError

# Per-call timeout (seconds): generous for a loopback node, short enough to fail a stuck test.
RPC_TIMEOUT_SECONDS = 10.0


class RpcError(DevnetError):
    """The node answered a JSON-RPC error object."""

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.error = error
        message = error.get("message") if isinstance(error, dict) else error
        super().__init__(f"{method} failed: {message}")


class JsonRpc:
    """Async JSON-RPC 2.0 over HTTP: `await rpc.call("eth_chainId")`."""

    def __init__(self, url: str, *, timeout: float = RPC_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._http = httpx.AsyncClient(timeout=timeout)
        self._ids = itertools.count(1)

    async def call(self, method: str, *params: Any) -> Any:
        body = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        response = await self._http.post(self.url, json=body)
        response.raise_for_status()
        answer = response.json()
        if answer.get("error") is not None:
            raise RpcError(method, answer["error"])
        return answer.get("result")

    async def aclose(self) -> None:
        await self._http.aclose()
