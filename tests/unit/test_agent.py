import pytest

from bindu.a2a import DataPart, Message, TextPart
from bindu.agent import call_agent, load_agent, to_parts
from bindu.errors import AgentLoadError
from tests.support import agents


def history(text: str) -> list[Message]:
    return [Message(role="user", parts=[TextPart(text=text)])]


def test_to_parts_normalises():
    assert to_parts("hi") == [TextPart(text="hi")]
    assert to_parts({"a": 1}) == [DataPart(data={"a": 1})]
    assert to_parts([{"kind": "text", "text": "x"}, "y"]) == [
        TextPart(text="x"),
        TextPart(text="y"),
    ]
    with pytest.raises(TypeError):
        to_parts(42)
    with pytest.raises(TypeError):
        to_parts([])


async def test_sync_and_async_agents():
    assert await call_agent(agents.counting, history("a")) == [TextPart(text="done: a")]
    parts = await call_agent(agents.async_echo, history("abc"))
    assert parts == [TextPart(text="async: abc"), DataPart(data={"length": 3})]


async def test_agent_exception_propagates():
    with pytest.raises(RuntimeError, match="the agent broke"):
        await call_agent(agents.failing, history("x"))


@pytest.mark.parametrize("spec", ["nocolon", "no.such.module:agent", "bindu.examples.echo:missing"])
def test_load_agent_errors(spec):
    with pytest.raises(AgentLoadError):
        load_agent(spec)


def test_load_echo():
    agent = load_agent("bindu.examples.echo:agent")
    assert agent(history("x")) == "echo: x"
