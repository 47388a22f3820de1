"""Failpoints: named places where a test can freeze a real server process and kill it.

``await failpoint("after-settled")`` does nothing unless the environment variable
``BINDU_FAILPOINTS`` (comma-separated names) lists that name. When it does, the name is
written to the file named by ``BINDU_FAILPOINT_FILE`` (so a test waiting on that file knows
the process reached exactly this step) and the coroutine blocks forever: the test then
SIGKILLs the process with nothing after the failpoint having run.

Names in use: after-claim, after-verify (paywall), after-queue (task queue),
after-settle-sent, after-settled, after-agent (runner).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

ENABLED_VAR = "BINDU_FAILPOINTS"
FILE_VAR = "BINDU_FAILPOINT_FILE"


def armed(name: str) -> bool:
    """Whether ``name`` is listed in BINDU_FAILPOINTS (read on each call: tests set it)."""
    names = os.environ.get(ENABLED_VAR, "")
    return name in {n.strip() for n in names.split(",") if n.strip()}


async def failpoint(name: str) -> None:
    if not armed(name):
        return
    path = os.environ.get(FILE_VAR)
    if path:
        await asyncio.to_thread(_write, Path(path), name)
    await asyncio.Event().wait()  # forever: the test kills the process here


def _write(path: Path, name: str) -> None:
    # Written whole and renamed, so a watcher never reads half a name.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(name, encoding="utf-8")
    tmp.replace(path)
