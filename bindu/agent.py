"""The agent API: a plain callable, sync or async, from history to text or parts."""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bindu.a2a import DataPart, Message, Part, TextPart
from bindu.errors import AgentLoadError

Agent = Callable[[list[Message]], Any]


class AgentFailed(Exception):
    """The agent raised, returned something unusable, or ran past its time budget."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_PART = TypeAdapter(Part)


def load_agent(spec: str) -> Agent:
    """Import ``MODULE:ATTR`` and check that it is callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AgentLoadError(f"--agent must look like MODULE:ATTR, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise AgentLoadError(f"cannot import {module_name!r}: {exc}") from exc
    agent = getattr(module, attr, None)
    if agent is None or not callable(agent):
        raise AgentLoadError(f"{spec!r} is not a callable in {module_name!r}")
    return agent  # type: ignore[no-any-return]


def to_parts(output: Any) -> list[Part]:
    """Normalise what an agent returned: text, a dict (data), a part, or a list of those."""
    items = output if isinstance(output, list) else [output]
    parts: list[Part] = []
    for item in items:
        if isinstance(item, str):
            parts.append(TextPart(text=item))
        elif isinstance(item, TextPart | DataPart):
            parts.append(item)
        elif isinstance(item, dict) and item.get("kind") in ("text", "data"):
            try:
                parts.append(_PART.validate_python(item))
            except ValidationError as exc:
                raise TypeError(f"agent returned an invalid part: {exc}") from exc
        elif isinstance(item, dict):
            parts.append(DataPart(data=item))
        else:
            raise TypeError(f"agent returned {type(item).__name__}; expected text, dict or parts")
    if not parts:
        raise TypeError("agent returned nothing")
    return parts


async def call_agent(agent: Agent, history: list[Message]) -> list[Part]:
    """Run the agent (sync ones in a thread, so they never block the event loop)."""
    if inspect.iscoroutinefunction(agent) or inspect.iscoroutinefunction(
        getattr(agent, "__call__", None)  # noqa: B004 - async callable objects
    ):
        output = await agent(history)
    else:
        output = await asyncio.to_thread(agent, history)
        if inspect.isawaitable(output):
            output = await output
    return to_parts(output)
