"""How a payment's state shows in task metadata (``x402.payment.*``) for A2A clients."""

from __future__ import annotations

from bindu.a2a import Task
from bindu.payments.lifecycle import public_name
from bindu.payments.records import META_ERROR, META_RECEIPTS, META_STATUS, PaymentStatus, Receipt


def with_payment_meta(
    task: Task, status: PaymentStatus, *, receipt: Receipt | None = None, error: str | None = None
) -> Task:
    """A copy of ``task`` whose metadata shows ``status`` by its public name (and the
    receipt, or the error)."""
    metadata = dict(task.metadata)
    metadata[META_STATUS] = public_name(status)
    if receipt is not None:
        metadata[META_RECEIPTS] = [receipt.to_json()]
    if error is None:
        metadata.pop(META_ERROR, None)
    else:
        metadata[META_ERROR] = error
    return task.model_copy(update={"metadata": metadata})
