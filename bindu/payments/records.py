"""The durable payment record and its statuses (DESIGN §3).

A record is written before ``/settle`` is sent and is the reconciler's source of truth.
The signed payload lives only here, never in task output or logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

# Task-metadata keys that show the payment state to A2A clients.
META_STATUS = "x402.payment.status"
META_RECEIPTS = "x402.payment.receipts"
META_ERROR = "x402.payment.error"
META_RECOVERED = "x402.payment.recovered"
META_REFUND = "x402.payment.refund"


class PaymentStatus(StrEnum):
    CLAIMED = "claimed"  # internal: nonce reserved, /verify not answered yet; never shown
    VERIFIED = "payment-verified"  # verified; its task waits in the queue
    SETTLING = "payment-settling"  # internal: a worker sent /settle; shown as payment-verified
    # internal: settled with a hash, work not delivered yet; shown as payment-completed
    SETTLED = "payment-settled"
    # fulfill policy: a reconciler is delivering the work (settling and/or running the agent).
    FULFILLING = "payment-fulfilling"
    COMPLETED = "payment-completed"
    FAILED = "payment-failed"
    ORPHANED = "payment-orphaned"
    VOID = "payment-void"
    UNRESOLVED = "payment-unresolved"
    REFUNDED = "payment-refunded"


# The reconciler's candidates once due (bindu.payments.lifecycle says who owns each status
# until then). payment-verified is not one: a queued payment belongs to the task queue.
OPEN_STATUSES = frozenset(
    {
        PaymentStatus.SETTLING,
        PaymentStatus.SETTLED,
        PaymentStatus.FAILED,
        PaymentStatus.FULFILLING,
    }
)
FINAL_STATUSES = frozenset(
    {
        PaymentStatus.COMPLETED,
        PaymentStatus.ORPHANED,
        PaymentStatus.VOID,
        PaymentStatus.UNRESOLVED,
        PaymentStatus.REFUNDED,
    }
)


@dataclass(frozen=True)
class Receipt:
    transaction: str
    network: str
    payer: str
    amount: str
    asset: str | None = None
    block_number: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "transaction": self.transaction,
            "network": self.network,
            "payer": self.payer,
            "amount": self.amount,
        }
        if self.asset is not None:
            out["asset"] = self.asset
        if self.block_number is not None:
            out["blockNumber"] = self.block_number
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Receipt:
        return cls(
            transaction=str(data["transaction"]),
            network=str(data["network"]),
            payer=str(data["payer"]),
            amount=str(data["amount"]),
            asset=data.get("asset"),
            block_number=data.get("blockNumber"),
        )


@dataclass(frozen=True)
class Refund:
    """An operator's refund of an orphan: a transfer from payTo back to the payer."""

    transaction: str
    amount: str
    recorded_at: datetime
    block_number: int | None = None
    checked_on_chain: bool = False
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "transaction": self.transaction,
            "amount": self.amount,
            "recordedAt": self.recorded_at.isoformat(),
            "blockNumber": self.block_number,
            "checkedOnChain": self.checked_on_chain,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Refund:
        return cls(
            transaction=str(data["transaction"]),
            amount=str(data["amount"]),
            recorded_at=datetime.fromisoformat(str(data["recordedAt"])),
            block_number=data.get("blockNumber"),
            checked_on_chain=bool(data.get("checkedOnChain", False)),
            note=data.get("note"),
        )


@dataclass(frozen=True)
class StatusStats:
    count: int
    oldest_created_at: datetime | None


@dataclass(frozen=True)
class PaymentRecord:
    """One x402 payment, keyed by ``id``; unique on (network, asset, payer, nonce)."""

    id: str
    task_id: str
    status: PaymentStatus
    network: str
    asset: str
    pay_to: str
    payer: str
    amount: str
    nonce: str  # 0x-prefixed 32-byte hex, lower case
    valid_after: int
    valid_before: int
    # Full x402 PaymentPayload / PaymentRequirements as JSON (camelCase). The payload is
    # signed: never log it and never return it from tasks/get.
    payload: dict[str, Any] | None
    requirements: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    settle_tx: str | None = None  # a hash the facilitator reported, even on failure
    error: str | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)  # facilitator/probe answers
    attempts: int = 0
    next_check_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    receipt: Receipt | None = None
    verdict_at: datetime | None = None
    refund: Refund | None = None
    # Set by storage when a stored column could not be decoded: the record is corrupt.
    decode_error: str | None = None

    def evolve(self, **changes: Any) -> PaymentRecord:
        return replace(self, **changes)

    def receipt_for(self, transaction: str, block_number: int | None = None) -> Receipt:
        """The receipt of this payment once ``transaction`` is known to carry it."""
        return Receipt(
            transaction=transaction,
            network=self.network,
            payer=self.payer,
            amount=self.amount,
            asset=self.asset,
            block_number=block_number,
        )


@dataclass(frozen=True)
class PaymentUpdate:
    """Fields to change in a compare-and-set transition; None means "leave as is"."""

    status: PaymentStatus | None = None
    settle_tx: str | None = None
    error: str | None = None
    clear_error: bool = False
    answer: dict[str, Any] | None = None  # appended to ``answers``
    attempts: int | None = None
    next_check_at: datetime | None = None
    receipt: Receipt | None = None
    verdict_at: datetime | None = None
    refund: Refund | None = None
    release_lease: bool = False
    # Take (or extend) the lease: a worker holds its settling/settled record this way, so a
    # reconciler that takes the record over afterwards makes the worker's next write lose.
    lease_to: str | None = None
    lease_until: datetime | None = None


def wire(model: BaseModel) -> dict[str, Any]:
    """An x402 model as the wire carries it (JSON types, camelCase names, no empty fields):
    the form kept on records and sent in 402 bodies."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
