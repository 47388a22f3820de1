"""Run anvil (the local EVM node from the npm package `@foundry-rs/anvil`) as a subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import platform
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
from loguru import logger

import bindu
from bindu.devnet.errors import DevnetError

DEFAULT_CHAIN_ID = 31337
STARTUP_TIMEOUT_SECONDS = 20.0
STOP_GRACE_SECONDS = 5.0
# A free port is picked by binding to port 0 and closing the socket; another process can grab
# it before anvil binds, so a start that loses that race is retried on a fresh port.
PORT_ATTEMPTS = 3
READY_POLL_SECONDS = 0.05

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_OS_NAMES = {"linux": "linux", "darwin": "darwin"}
_ARCH_NAMES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def platform_package() -> str:
    """The npm package with this platform's anvil, e.g. `@foundry-rs/anvil-linux-amd64`."""
    os_name = _OS_NAMES.get(sys.platform)
    arch = _ARCH_NAMES.get(platform.machine().lower())
    if os_name is None or arch is None:
        raise DevnetError(
            f"no anvil package for platform {sys.platform}/{platform.machine()}; "
            "set BINDU_ANVIL to an anvil binary"
        )
    return f"@foundry-rs/anvil-{os_name}-{arch}"


def _search_roots() -> list[Path]:
    # The working directory (a checkout used as cwd) and the directory holding the `bindu`
    # package (the repo root in a development install), each walked up to the filesystem root.
    starts = [Path.cwd(), Path(bindu.__file__).resolve().parent.parent]
    roots: list[Path] = []
    for start in starts:
        for directory in (start, *start.parents):
            if directory not in roots:
                roots.append(directory)
    return roots


def find_anvil() -> Path:
    """Locate the anvil binary: `BINDU_ANVIL`, else the platform package under `node_modules`."""
    override = os.environ.get("BINDU_ANVIL")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise DevnetError(f"BINDU_ANVIL={override} is not an executable file")
        return path
    package = platform_package()
    for root in _search_roots():
        candidate = root / "node_modules" / package / "bin" / "anvil"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise DevnetError(
        f"anvil not found (looked for node_modules/{package}/bin/anvil above {Path.cwd()} and "
        "the bindu package): run `make` or `npm ci --ignore-scripts` in the repository root, "
        "or set BINDU_ANVIL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _exit_with_parent() -> None:
    # Runs in the child just before exec, Linux only: the kernel sends anvil SIGTERM when the
    # thread that started it dies, so a SIGKILLed or os._exit-ed test run leaves no node behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _PortTaken(Exception):
    pass


class Anvil:
    """One anvil process on 127.0.0.1 with no dev accounts; use `async with Anvil() as node`."""

    def __init__(
        self,
        *,
        chain_id: int = DEFAULT_CHAIN_ID,
        binary: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_SECONDS,
    ) -> None:
        self.chain_id = chain_id
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._stderr: IO[bytes] | None = None
        self.port = 0

    @property
    def rpc_url(self) -> str:
        if self._process is None:
            raise DevnetError("anvil is not running")
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        binary = self._binary or find_anvil()
        for _ in range(PORT_ATTEMPTS):
            self.port = free_port()
            try:
                await self._launch(binary)
                logger.info("anvil ready on {} (chain id {})", self.rpc_url, self.chain_id)
                return
            except _PortTaken:
                logger.warning("anvil lost port {} to another process, retrying", self.port)
        raise DevnetError(f"anvil could not bind a free port in {PORT_ATTEMPTS} attempts")

    async def _launch(self, binary: Path) -> None:
        # Quiet, and no dev accounts: anvil's well-known keys must never hold anything here;
        # every key the devnet uses is generated at run time.
        args = [
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--accounts", "0",
            "--quiet",
        ]  # fmt: skip
        # stderr goes to a temporary file, not a pipe nobody drains, and is read on failure.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        self._process = await asyncio.create_subprocess_exec(
            str(binary),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self._stderr,
            preexec_fn=_exit_with_parent if sys.platform == "linux" else None,
        )
        try:
            await self._wait_ready(self._process)
        except BaseException:
            await self.stop()
            raise

    async def _wait_ready(self, process: asyncio.subprocess.Process) -> None:
        url = f"http://127.0.0.1:{self.port}"
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
        deadline = time.monotonic() + self._startup_timeout
        async with httpx.AsyncClient(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if process.returncode is not None:
                    output = self._read_stderr()
                    if "in use" in output.lower():
                        raise _PortTaken
                    raise DevnetError(
                        f"anvil exited with code {process.returncode}: {output.strip()}"
                    )
                try:
                    answer = (await http.post(url, json=body)).json()
                except (httpx.TransportError, ValueError):
                    await asyncio.sleep(READY_POLL_SECONDS)
                    continue
                chain_id = int(answer["result"], 16)
                if chain_id != self.chain_id:
                    raise DevnetError(f"anvil reports chain id {chain_id}, wanted {self.chain_id}")
                return
        raise DevnetError(f"anvil did not answer eth_chainId within {self._startup_timeout} s")

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()[-4000:].decode("utf-8", "replace")

    async def stop(self) -> None:
        """Terminate anvil, killing it if it has not exited after a grace period."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                logger.warning("anvil ignored SIGTERM for {} s, killing it", STOP_GRACE_SECONDS)
                process.kill()
                await process.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    async def __aenter__(self) -> Anvil:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
