"""The settle deadline and the late answer: past the deadline the HTTP call is not
cancelled but listened to for a bounded window, and its answer is handed over."""

from __future__ import annotations

import asyncio

import pytest
from x402.schemas import SettleResponse

from bindu.payments.settle import SettleKind, settle_listening, settle_with_deadline

TX = "0x" + "cd" * 32


class Facilitator:
    """A settle call that answers when the test says so, and records a cancel."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[SettleResponse] = asyncio.get_running_loop().create_future()
        self.cancelled = False
        self.started = asyncio.Event()

    async def settle(self) -> SettleResponse:
        self.started.set()
        try:
            return await self.answer
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def succeed(self) -> None:
        self.answer.set_result(SettleResponse(success=True, transaction=TX, network="eip155:1"))


async def test_an_answer_within_the_deadline_needs_no_listener() -> None:
    f = Facilitator()
    f.succeed()
    outcome, late = await settle_listening(f.settle(), 5, late_seconds=5)
    assert (outcome.kind, outcome.transaction, outcome.answered) == (SettleKind.SETTLED, TX, True)
    assert late is None


async def test_past_the_deadline_the_call_keeps_running_and_its_answer_is_handed_over() -> None:
    f = Facilitator()
    outcome, late = await settle_listening(f.settle(), 0.01, late_seconds=30)
    assert outcome.kind is SettleKind.FAILED and outcome.answered is False
    assert outcome.reason is not None and outcome.reason.startswith("settle_timeout")
    assert late is not None and not late.done() and not f.cancelled
    f.succeed()
    answer = await asyncio.wait_for(late, 5)
    assert answer is not None and (answer.kind, answer.transaction) == (SettleKind.SETTLED, TX)
    assert not f.cancelled


async def test_no_answer_within_the_window_cancels_the_call() -> None:
    f = Facilitator()
    _, late = await settle_listening(f.settle(), 0.01, late_seconds=0.05)
    assert late is not None
    assert await asyncio.wait_for(late, 5) is None
    assert f.cancelled


async def test_a_late_error_is_read_like_any_answer() -> None:
    f = Facilitator()
    _, late = await settle_listening(f.settle(), 0.01, late_seconds=30)
    assert late is not None
    f.answer.set_exception(ValueError('Facilitator settle failed (500): {"errorReason": "boom"}'))
    answer = await asyncio.wait_for(late, 5)
    assert answer is not None and answer.kind is SettleKind.FAILED and answer.answered is True
    assert answer.reason == "boom"


async def test_without_a_window_the_call_is_cancelled_at_the_deadline() -> None:
    f = Facilitator()
    outcome = await settle_with_deadline(f.settle(), 0.01)
    assert outcome.kind is SettleKind.FAILED and outcome.answered is False
    await asyncio.sleep(0)  # one loop turn: the cancellation reaches the call
    assert f.cancelled


async def test_a_transport_error_is_not_an_answer() -> None:
    async def refused() -> SettleResponse:
        raise ConnectionResetError("reset by peer")

    outcome, late = await settle_listening(refused(), 5, late_seconds=5)
    assert outcome.kind is SettleKind.FAILED and outcome.answered is False and late is None


async def test_cancelling_the_waiter_cancels_the_call() -> None:
    f = Facilitator()
    waiter = asyncio.create_task(settle_listening(f.settle(), 30, late_seconds=30))
    await asyncio.wait_for(f.started.wait(), 5)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0)  # one loop turn: the cancellation reaches the call
    assert f.cancelled
