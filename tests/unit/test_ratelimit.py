"""Token buckets for refused payments, on a clock the test turns."""

from __future__ import annotations

import pytest

from bindu.payments.ratelimit import Buckets, RefusalLimits
from bindu.settings import RateLimitSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_burst_then_a_wait_of_one_refill(clock):
    buckets = Buckets(burst=3, per_minute=6, max_keys=10, clock=clock)  # a token per 10 s
    for _ in range(3):
        assert buckets.wait("a") == 0
        buckets.charge("a")
    assert buckets.wait("a") == pytest.approx(10.0)
    clock.now += 4
    assert buckets.wait("a") == pytest.approx(6.0)
    clock.now += 6
    assert buckets.wait("a") == 0
    buckets.charge("a")
    assert buckets.wait("a") == pytest.approx(10.0)


def test_keys_are_separate(clock):
    buckets = Buckets(burst=1, per_minute=1, max_keys=10, clock=clock)
    buckets.charge("a")
    assert buckets.wait("a") > 0
    assert buckets.wait("b") == 0


def test_an_empty_bucket_does_not_go_into_debt(clock):
    buckets = Buckets(burst=2, per_minute=60, max_keys=10, clock=clock)
    for _ in range(50):
        buckets.charge("a")
    assert buckets.wait("a") == pytest.approx(1.0)


def test_refund_gives_back_what_was_charged(clock):
    buckets = Buckets(burst=1, per_minute=1, max_keys=10, clock=clock)
    buckets.charge("a")
    buckets.refund("a")
    assert buckets.wait("a") == 0
    assert len(buckets) == 0  # full again: forgotten
    buckets.refund("b")  # never charged: nothing to give back, nothing remembered
    assert len(buckets) == 0 and buckets.wait("b") == 0


def test_only_buckets_below_full_are_remembered(clock):
    buckets = Buckets(burst=2, per_minute=60, max_keys=10, clock=clock)
    buckets.charge("a")
    assert len(buckets) == 1
    clock.now += 1  # refilled
    buckets.charge("b")
    buckets.refund("b")
    assert buckets.wait("a") == 0
    buckets.charge("a")
    assert len(buckets) == 1  # a is at 1 token again; b was full and forgotten


def test_memory_is_bounded_by_forgetting_the_least_recently_charged(clock):
    buckets = Buckets(burst=1, per_minute=1, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        buckets.charge(key)
    buckets.charge("a")  # a is now the most recent
    buckets.charge("d")
    assert len(buckets) == 3
    assert buckets.wait("b") == 0  # forgotten
    assert all(buckets.wait(k) > 0 for k in ("a", "c", "d"))


@pytest.mark.parametrize(
    ("burst", "per_minute", "max_keys"), [(0, 1, 1), (1, 0, 1), (1, 1, 0), (1, -1, 1)]
)
def test_nonsense_sizes_are_refused(burst, per_minute, max_keys):
    with pytest.raises(ValueError):
        Buckets(burst=burst, per_minute=per_minute, max_keys=max_keys)


def test_limits_follow_the_settings(clock):
    limits = RefusalLimits(
        RateLimitSettings(client_burst=2, client_per_minute=30, payer_burst=1, payer_per_minute=60),
        clock,
    )
    for _ in range(2):
        limits.clients.charge("10.0.0.1")
    assert limits.clients.wait("10.0.0.1") == pytest.approx(2.0)
    limits.payers.charge("0xabc")
    assert limits.payers.wait("0xabc") == pytest.approx(1.0)
    assert limits.smart_wallets is not None


def test_no_smart_wallet_budget_means_none(clock):
    limits = RefusalLimits(RateLimitSettings(smart_wallet_burst=0), clock)
    assert limits.smart_wallets is None
