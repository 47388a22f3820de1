"""Token buckets for refused payments: per client address, per payer, and one server-wide
bucket for signatures only the facilitator can judge (smart wallets).

Only refusals draw on a bucket (a successful payment never does), so an honest payer is not
slowed by its own traffic. A bucket is remembered only while it is below full: a full bucket
and a forgotten one behave the same, which keeps memory proportional to recent abusers.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from bindu.settings import RateLimitSettings

Clock = Callable[[], float]


@dataclass
class _Level:
    tokens: float
    at: float


class Buckets:
    """Token buckets by key: ``burst`` tokens each, refilled at ``per_minute``."""

    def __init__(
        self, burst: int, per_minute: float, max_keys: int, clock: Clock = time.monotonic
    ) -> None:
        if burst < 1 or per_minute <= 0 or max_keys < 1:
            raise ValueError("burst, per_minute and max_keys must be positive")
        self.burst = float(burst)
        self.rate = per_minute / 60.0  # tokens per second
        self._max_keys = max_keys
        self._clock = clock
        # Least recently charged first, so the oldest is forgotten when over max_keys.
        self._levels: OrderedDict[str, _Level] = OrderedDict()

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token; 0 when it has one now. Takes nothing."""
        tokens = self._tokens(key)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def charge(self, key: str) -> None:
        """Take one token from ``key`` (a bucket never goes below empty)."""
        self._set(key, max(0.0, self._tokens(key) - 1))
        self._levels.move_to_end(key)
        while len(self._levels) > self._max_keys:
            self._levels.popitem(last=False)

    def refund(self, key: str) -> None:
        """Give back a token charged ahead of an outcome that turned out not to be a refusal."""
        if key in self._levels:
            self._set(key, self._tokens(key) + 1)

    def __len__(self) -> int:
        return len(self._levels)

    def _tokens(self, key: str) -> float:
        level = self._levels.get(key)
        if level is None:
            return self.burst
        return min(self.burst, level.tokens + (self._clock() - level.at) * self.rate)

    def _set(self, key: str, tokens: float) -> None:
        if tokens >= self.burst:
            self._levels.pop(key, None)
        else:
            self._levels[key] = _Level(tokens, self._clock())


class RefusalLimits:
    """The paywall's three budgets, built from ``X402__RATE_LIMIT__…``."""

    def __init__(self, settings: RateLimitSettings, clock: Clock = time.monotonic) -> None:
        keep = settings.max_tracked
        self.clients = Buckets(settings.client_burst, settings.client_per_minute, keep, clock)
        self.payers = Buckets(settings.payer_burst, settings.payer_per_minute, keep, clock)
        # None: smart-wallet signatures are refused outright (burst 0).
        self.smart_wallets = (
            Buckets(settings.smart_wallet_burst, settings.smart_wallet_per_minute, 1, clock)
            if settings.smart_wallet_burst > 0
            else None
        )
