"""The devnet facilitator's fault switch and request counters.

Faults reproduce, on demand, the answers real facilitators give when things go wrong (see
DESIGN.md §2), so the server and reconciler can be tested against each one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FaultSwitch:
    """What the facilitator should do wrong. All off by default; `reset()` turns them off."""

    # Settle normally (broadcast, wait for the receipt), then wait this long before answering:
    # the server's settle call times out while the chain already holds the transfer.
    settle_delay_seconds: float = 0.0
    # /settle answers HTTP 500 with a JSON error and never touches the chain.
    settle_fail_before_broadcast: bool = False
    # A settlement_pending answer is sent with HTTP 500 (as some hosted facilitators do);
    # the body is still the SettleResponse JSON, hash included.
    pending_as_http_500: bool = False
    # /verify waits this long before verifying and answering (a slow facilitator): the
    # server's verify call is in flight, the nonce claimed, nothing settled.
    verify_delay_seconds: float = 0.0
    # /verify answers this HTTP status with a JSON error body (None: verify normally).
    verify_error_status: int | None = None
    # /verify and /settle answer HTTP 200 with a body that is not JSON. The real verify or
    # settle still runs first (a broken proxy garbling the answer): the transfer may land.
    malformed_json: bool = False
    # /supported, /verify and /settle answer 503. The /_faults and /_stats control endpoints
    # stay up, so the switch can be turned off again over HTTP.
    unavailable: bool = False

    def update(self, changes: dict[str, Any]) -> None:
        """Set several fields at once, all or none: unknown names or bad values raise ValueError."""
        checked = {name: _check(name, value) for name, value in changes.items()}
        for name, value in checked.items():
            setattr(self, name, value)

    def reset(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(name: str, value: Any) -> Any:
    if name in {"settle_delay_seconds", "verify_delay_seconds"}:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"{name} must be a number >= 0")
        return float(value)
    if name == "verify_error_status":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599
        ):
            raise ValueError("verify_error_status must be an HTTP status (100-599) or null")
        return value
    if name in {
        "settle_fail_before_broadcast",
        "pending_as_http_500",
        "malformed_json",
        "unavailable",
    }:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false")
        return value
    raise ValueError(f"unknown fault {name!r}")


@dataclass
class FacilitatorStats:
    """Requests received per endpoint, and every transaction hash a settle answer carried."""

    supported: int = 0
    verify: int = 0
    settle: int = 0
    settle_transactions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
