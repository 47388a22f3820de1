"""Agents used by tests (importable by server subprocesses as tests.support.agents:NAME)."""

from __future__ import annotations

import asyncio
import os
import time

from bindu.a2a import Message, TextPart

RUNS_FILE_ENV = "BINDU_TEST_RUNS_FILE"


def _text(history: list[Message]) -> str:
    return " ".join(p.text for p in history[-1].parts if isinstance(p, TextPart))


def _count_run(history: list[Message]) -> None:
    # One line per agent run, so tests can count runs across server processes.
    path = os.environ.get(RUNS_FILE_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write((history[-1].task_id or "?") + "\n")


def counting(history: list[Message]) -> str:
    _count_run(history)
    return "done: " + _text(history)


def slow(history: list[Message]) -> str:
    _count_run(history)
    time.sleep(float(os.environ.get("BINDU_TEST_AGENT_SECONDS", "1.0")))
    return "slow: " + _text(history)


async def async_echo(history: list[Message]) -> list[object]:
    await asyncio.sleep(0)
    return ["async: " + _text(history), {"length": len(_text(history))}]


def failing(history: list[Message]) -> str:
    _count_run(history)
    raise RuntimeError("the agent broke")


def count_runs(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def unencodable(history: list[Message]) -> list[object]:
    # A lone surrogate and a NaN: what no JSON response can carry as is.
    return ["bad \ud800 output", {"ratio": float("nan"), "key \udfff": 1}]
