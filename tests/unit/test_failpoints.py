import asyncio
from pathlib import Path

import pytest

from bindu.failpoints import armed, failpoint
from tests.support.waiting import until


async def test_a_failpoint_not_named_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINDU_FAILPOINTS", "after-claim, after-agent")
    assert not armed("after-verify")
    await asyncio.wait_for(failpoint("after-verify"), 5)


async def test_without_the_variable_no_failpoint_is_armed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BINDU_FAILPOINTS", raising=False)
    assert not armed("after-claim")
    await asyncio.wait_for(failpoint("after-claim"), 5)


async def test_a_named_failpoint_writes_its_name_and_blocks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    marker = tmp_path / "reached"
    monkeypatch.setenv("BINDU_FAILPOINTS", "after-claim,after-settled")
    monkeypatch.setenv("BINDU_FAILPOINT_FILE", str(marker))
    blocked = asyncio.create_task(failpoint("after-settled"))

    async def reached() -> bool:
        return marker.exists()

    await until(reached, what="the failpoint's marker file")
    assert marker.read_text() == "after-settled"
    assert not blocked.done()  # still blocked: the test would SIGKILL here
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
