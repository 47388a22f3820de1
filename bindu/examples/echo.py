"""The echo agent: answers with the text of the last user message."""

from __future__ import annotations

from bindu.a2a import Message, TextPart


def agent(history: list[Message]) -> str:
    for message in reversed(history):
        if message.role == "user":
            texts = [p.text for p in message.parts if isinstance(p, TextPart)]
            return "echo: " + " ".join(texts)
    return "echo: (nothing to echo)"
