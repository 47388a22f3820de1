"""An operator's refund of an orphan payment, checked on chain before it is recorded.

A refund is a transfer of the payment's token from the payee (``payTo``) back to the
payer, mined after the payment's own transfer (an older transfer cannot refund it).
``judge_refund`` is a pure function of (record, transaction hash, receipt, latest block,
where the payment sits on chain): every refusal is a plain unit test.
``check_refund_on_chain`` fetches what it needs with web3 (as the reconciler's chain
probe does) and asks it. That one transaction refunds one payment only is the storage's
refund ledger's job (``RefundTxTaken``), in the transaction that records the refund.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound

from bindu.a2a import Task
from bindu.payments.evm_logs import TRANSFER_TOPIC, to_hex, to_int, topic_address
from bindu.payments.records import META_REFUND, PaymentRecord, PaymentStatus, Refund
from bindu.payments.task_meta import with_payment_meta


@dataclass(frozen=True)
class RefundCheck:
    """The chain's answer about a claimed refund transaction."""

    accepted: bool
    reason: str  # one line, fit for an operator
    block_number: int | None = None
    amount: int | None = None  # the matching Transfer's value, when accepted


@dataclass(frozen=True)
class PaymentPosition:
    """Where the payment's own transfer was mined, or, when that transaction is unknown,
    the earliest moment it can have been (its record was written before /settle)."""

    block_number: int | None = None
    tx_index: int | None = None  # within the block; None when unknown
    not_before: int | None = None  # unix time: the record's creation


@dataclass(frozen=True)
class _Transfer:
    source: str
    target: str
    value: int


def _token_transfers(asset: str, logs: Sequence[Mapping[str, Any]]) -> list[_Transfer]:
    """The ERC-20 Transfer events ``asset`` emitted (reorganised-away logs ignored)."""
    found: list[_Transfer] = []
    for log in logs:
        if log.get("removed") or str(log.get("address", "")).lower() != asset.lower():
            continue
        topics = [to_hex(topic) for topic in log.get("topics", [])]
        if len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            continue
        found.append(
            _Transfer(
                topic_address(topics[1]), topic_address(topics[2]), to_int(log.get("data", "0x"))
            )
        )
    return found


def judge_refund(
    record: PaymentRecord,
    tx_hash: str,
    receipt: Mapping[str, Any] | None,
    *,
    latest_block: int | None = None,
    confirmations: int = 1,
    paid_at: PaymentPosition | None = None,
    block_time: int | None = None,
) -> RefundCheck:
    """Whether ``receipt`` (of ``tx_hash``) proves a refund of ``record``: mined and
    successful, after the payment (``paid_at``; ``block_time`` is the refund's block
    timestamp, for a payment known only by its creation time), with a Transfer log of the
    record's token moving at least the record's amount from its payTo to its payer, and
    ``confirmations`` deep when ``latest_block`` is known."""
    tx = tx_hash.lower()
    paid = record.receipt.transaction if record.receipt else record.settle_tx
    if paid and paid.lower() == tx:
        return RefundCheck(False, f"transaction {tx} is the payment itself, not a refund")
    if receipt is None:
        return RefundCheck(False, f"transaction {tx} has no receipt on {record.network}")
    try:
        status = to_int(receipt.get("status"))
        block = to_int(receipt.get("blockNumber"))
        raw_index = receipt.get("transactionIndex")
        index = None if raw_index is None else to_int(raw_index)
        transfers = _token_transfers(record.asset, receipt.get("logs") or [])
        owed = int(record.amount)
    except (TypeError, ValueError) as exc:
        return RefundCheck(False, f"transaction {tx}: unreadable receipt or record ({exc})")
    if status != 1:
        return RefundCheck(False, f"transaction {tx} failed on chain (status {status})")
    early = _before_payment(tx, (block, index), paid_at, block_time)
    if early is not None:
        return RefundCheck(False, early)
    if latest_block is not None:
        depth = latest_block - block + 1
        if depth < max(1, confirmations):
            return RefundCheck(
                False,
                f"transaction {tx} has {depth}/{confirmations} confirmations; try again later",
            )
    if not transfers:
        return RefundCheck(False, f"transaction {tx} moves no {record.asset} tokens")
    payee, payer = record.pay_to.lower(), record.payer.lower()
    back = [t for t in transfers if t.source == payee and t.target == payer]
    if not back:
        first = transfers[0]
        return RefundCheck(
            False,
            f"transaction {tx} moves the token from {first.source} to {first.target},"
            f" not from payTo {payee} to the payer {payer}",
        )
    best = max(back, key=lambda t: t.value)
    if best.value < owed:
        return RefundCheck(
            False, f"transaction {tx} returns {best.value}, less than the payment's {owed}"
        )
    return RefundCheck(
        True,
        f"transaction {tx} returns {best.value} from payTo to the payer in block {block}",
        block_number=block,
        amount=best.value,
    )


def _before_payment(
    tx: str,
    mined: tuple[int, int | None],
    paid_at: PaymentPosition | None,
    block_time: int | None,
) -> str | None:
    """Why ``tx`` (mined at (block, index)) cannot be a refund: it predates the payment."""
    if paid_at is None:
        return None
    block, index = mined
    if paid_at.block_number is not None:
        paid_block = paid_at.block_number
        earlier_in_block = (
            block == paid_block
            and paid_at.tx_index is not None
            and index is not None
            and index < paid_at.tx_index
        )
        if block < paid_block or earlier_in_block:
            return (
                f"transaction {tx} was mined in block {block}, before the payment's own"
                f" transfer (block {paid_block}): it cannot be its refund"
            )
        return None
    if (
        paid_at.not_before is not None
        and block_time is not None
        and block_time < paid_at.not_before
    ):
        return (
            f"transaction {tx} was mined at {block_time}, before the payment was made"
            f" ({paid_at.not_before}): it cannot be its refund"
        )
    return None


async def check_refund_on_chain(
    rpc_url: str,
    record: PaymentRecord,
    tx_hash: str,
    *,
    timeout: float = 10.0,
    confirmations: int = 1,
) -> RefundCheck:
    """Fetch ``tx_hash``'s receipt (and the latest block) and judge it; an RPC that fails
    refuses the refund with its reason (nothing unproven is recorded as checked)."""
    w3 = AsyncWeb3(
        AsyncHTTPProvider(
            rpc_url, request_kwargs={"timeout": timeout}, exception_retry_configuration=None
        )
    )
    block_time: int | None = None
    paid_at: PaymentPosition | None = None
    try:
        receipt = await _receipt(w3, tx_hash)
        latest = int(await w3.eth.block_number) if receipt is not None else None
        if receipt is not None:
            paid_at = await _payment_position(w3, record)
            if paid_at.block_number is None:
                mined = await w3.eth.get_block(to_int(receipt.get("blockNumber")))
                block_time = int(mined["timestamp"])
    except Exception as exc:
        reason = f"cannot check {tx_hash} on {record.network}: {type(exc).__name__}: {exc}"
        return RefundCheck(False, " ".join(reason.split())[:300])
    finally:
        await w3.provider.disconnect()
    return judge_refund(
        record,
        tx_hash,
        receipt,
        latest_block=latest,
        confirmations=confirmations,
        paid_at=paid_at,
        block_time=block_time,
    )


async def _receipt(w3: AsyncWeb3[Any], tx_hash: str) -> Mapping[str, Any] | None:
    try:
        receipt: Mapping[str, Any] = await w3.eth.get_transaction_receipt(
            tx_hash  # type: ignore[arg-type]
        )
    except TransactionNotFound:
        return None
    return receipt


async def _payment_position(w3: AsyncWeb3[Any], record: PaymentRecord) -> PaymentPosition:
    """Where the payment's transfer was mined: from its own receipt when its hash is known
    and mined, else the block the record names, else only the record's creation time."""
    paid = record.receipt.transaction if record.receipt else record.settle_tx
    if paid:
        mined = await _receipt(w3, paid)
        if mined is not None and to_int(mined.get("status")) == 1:
            return PaymentPosition(
                to_int(mined.get("blockNumber")), to_int(mined.get("transactionIndex"))
            )
    if record.receipt is not None and record.receipt.block_number is not None:
        return PaymentPosition(record.receipt.block_number)
    return PaymentPosition(not_before=int(record.created_at.timestamp()))


def refunded_task(task: Task, record: PaymentRecord, refund: Refund) -> Task:
    """``task`` with its metadata showing the refund: status payment-refunded, the original
    receipt kept, and ``x402.payment.refund`` = {transaction, amount}."""
    updated = with_payment_meta(task, PaymentStatus.REFUNDED, receipt=record.receipt)
    metadata = dict(updated.metadata)
    metadata[META_REFUND] = {"transaction": refund.transaction, "amount": refund.amount}
    return updated.model_copy(update={"metadata": metadata})
