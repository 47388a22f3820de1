"""What the probes bring back: plain values, no I/O, so the verdict stays a pure function."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChainUse:
    """The AuthorizationUsed / AuthorizationCanceled log found for (payer, nonce)."""

    tx_hash: str
    block_number: int
    canceled: bool
    # True when the same transaction holds Transfer(payer -> payTo, amount) from the token.
    transfer_ok: bool


@dataclass(frozen=True)
class ChainEvidence:
    used: bool  # authorizationState(payer, nonce): used OR canceled
    use: ChainUse | None
    latest_block: int
    latest_time: int  # timestamp of the latest block (chain time, not wall time)

    @property
    def confirmations(self) -> int:
        if self.use is None:
            return 0
        return max(0, self.latest_block - self.use.block_number + 1)


@dataclass(frozen=True)
class VerifyEvidence:
    """The facilitator's /verify answer, the read-only probe when no RPC is configured."""

    is_valid: bool
    invalid_reason: str | None


@dataclass(frozen=True)
class ProbeFailure:
    source: str  # "chain" | "facilitator"
    reason: str


@dataclass(frozen=True)
class Corrupt:
    reason: str


Evidence = ChainEvidence | VerifyEvidence | ProbeFailure | Corrupt
