"""The refund check (bindu.payments.refunds.judge_refund) on receipts built as dicts, in
both shapes a receipt arrives in: raw JSON-RPC (hex strings) and web3 (ints, bytes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bindu.a2a import Task, TaskState, TaskStatus
from bindu.payments.records import (
    META_ERROR,
    META_RECEIPTS,
    META_REFUND,
    META_STATUS,
    PaymentRecord,
    PaymentStatus,
    Receipt,
    Refund,
)
from bindu.payments.refunds import (
    TRANSFER_TOPIC,
    PaymentPosition,
    check_refund_on_chain,
    judge_refund,
    refunded_task,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TOKEN = "0x" + "a1" * 20
OTHER_TOKEN = "0x" + "a2" * 20
PAY_TO = "0x" + "b1" * 20
PAYER = "0x" + "c1" * 20
STRANGER = "0x" + "d1" * 20
PAID_TX = "0x" + "11" * 32
REFUND_TX = "0x" + "22" * 32
AMOUNT = 10_000
APPROVAL_TOPIC = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"


def make_record(**changes: Any) -> PaymentRecord:
    base = PaymentRecord(
        id="pay-1",
        task_id="task-1",
        status=PaymentStatus.ORPHANED,
        network="eip155:31337",
        asset=TOKEN,
        pay_to=PAY_TO,
        payer=PAYER,
        amount=str(AMOUNT),
        nonce="0x" + "00" * 32,
        valid_after=0,
        valid_before=2_000_000_000,
        payload=None,
        requirements=None,
        created_at=T0,
        updated_at=T0,
        receipt=Receipt(PAID_TX, "eip155:31337", PAYER, str(AMOUNT), TOKEN, 5),
    )
    return base.evolve(**changes)


def topic(address: str) -> str:
    return "0x" + "00" * 12 + address.lower().removeprefix("0x")


def transfer(
    source: str, target: str, value: int, *, token: str = TOKEN, removed: bool = False
) -> dict[str, Any]:
    return {
        "address": token,
        "topics": [TRANSFER_TOPIC, topic(source), topic(target)],
        "data": "0x" + value.to_bytes(32, "big").hex(),
        "removed": removed,
    }


def receipt(*logs: dict[str, Any], status: int = 1, block: int = 40) -> dict[str, Any]:
    """As eth_getTransactionReceipt returns it over JSON-RPC: quantities as hex strings."""
    return {
        "transactionHash": REFUND_TX,
        "status": hex(status),
        "blockNumber": hex(block),
        "logs": list(logs),
    }


def as_web3(raw: dict[str, Any]) -> dict[str, Any]:
    """The same receipt as web3 hands it over: ints, bytes topics and data, checksum-ish
    (upper-case) addresses."""
    return {
        **raw,
        "status": int(raw["status"], 16),
        "blockNumber": int(raw["blockNumber"], 16),
        "logs": [
            {
                **log,
                "address": "0x" + log["address"][2:].upper(),
                "topics": [bytes.fromhex(t[2:]) for t in log["topics"]],
                "data": bytes.fromhex(log["data"][2:]),
            }
            for log in raw["logs"]
        ],
    }


SHAPES = [pytest.param(lambda r: r, id="json-rpc"), pytest.param(as_web3, id="web3")]


def judge(raw: dict[str, Any] | None, shape: Any = None, **kwargs: Any):
    shaped = raw if raw is None or shape is None else shape(raw)
    return judge_refund(make_record(), REFUND_TX, shaped, **kwargs)


# Refusals


def test_missing_receipt_is_refused() -> None:
    check = judge(None)
    assert not check.accepted and "no receipt" in check.reason and REFUND_TX in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_failed_transaction_is_refused(shape: Any) -> None:
    check = judge(receipt(transfer(PAY_TO, PAYER, AMOUNT), status=0), shape)
    assert not check.accepted and "failed on chain" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_wrong_token_is_refused(shape: Any) -> None:
    check = judge(receipt(transfer(PAY_TO, PAYER, AMOUNT, token=OTHER_TOKEN)), shape)
    assert not check.accepted and f"moves no {TOKEN} tokens" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_no_logs_at_all_is_refused(shape: Any) -> None:
    check = judge(receipt(), shape)
    assert not check.accepted and "moves no" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_other_event_of_the_token_is_not_a_transfer(shape: Any) -> None:
    approval = {**transfer(PAY_TO, PAYER, AMOUNT)}
    approval["topics"] = [APPROVAL_TOPIC, *approval["topics"][1:]]
    check = judge(receipt(approval), shape)
    assert not check.accepted and "moves no" in check.reason


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (PAYER, PAY_TO),  # the payment direction: another payment, not a refund
        (PAY_TO, STRANGER),  # paid out to someone else
        (STRANGER, PAYER),  # someone else paid the payer
    ],
    ids=["payer-to-payee", "payee-to-stranger", "stranger-to-payer"],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_wrong_direction_is_refused(shape: Any, source: str, target: str) -> None:
    check = judge(receipt(transfer(source, target, AMOUNT)), shape)
    assert not check.accepted
    assert f"from {source} to {target}" in check.reason and "not from payTo" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_too_small_is_refused(shape: Any) -> None:
    check = judge(receipt(transfer(PAY_TO, PAYER, AMOUNT - 1)), shape)
    assert not check.accepted and f"returns {AMOUNT - 1}, less than" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_several_small_transfers_do_not_add_up(shape: Any) -> None:
    half = transfer(PAY_TO, PAYER, AMOUNT // 2)
    check = judge(receipt(half, half), shape)
    assert not check.accepted and "less than" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_removed_log_does_not_count(shape: Any) -> None:
    check = judge(receipt(transfer(PAY_TO, PAYER, AMOUNT, removed=True)), shape)
    assert not check.accepted and "moves no" in check.reason


def test_the_payment_itself_is_refused() -> None:
    check = judge_refund(make_record(), PAID_TX.upper().replace("0X", "0x"), receipt())
    assert not check.accepted and "the payment itself" in check.reason
    # Without a receipt, the hash the facilitator reported counts as the payment too.
    record = make_record(receipt=None, settle_tx=REFUND_TX)
    check = judge_refund(record, REFUND_TX, receipt(transfer(PAY_TO, PAYER, AMOUNT)))
    assert not check.accepted and "the payment itself" in check.reason


def test_not_enough_confirmations_is_refused() -> None:
    raw = receipt(transfer(PAY_TO, PAYER, AMOUNT), block=40)
    check = judge(raw, latest_block=41, confirmations=3)
    assert not check.accepted and "2/3 confirmations" in check.reason
    assert judge(raw, latest_block=42, confirmations=3).accepted


def test_unreadable_receipt_is_refused() -> None:
    raw = receipt(transfer(PAY_TO, PAYER, AMOUNT))
    raw["status"] = "yes"
    check = judge(raw)
    assert not check.accepted and "unreadable" in check.reason


# Block order: a refund is mined after the payment's own transfer


def positioned(block: int, index: int | None) -> dict[str, Any]:
    raw = receipt(transfer(PAY_TO, PAYER, AMOUNT), block=block)
    if index is not None:
        raw["transactionIndex"] = hex(index)
    return raw


@pytest.mark.parametrize("shape", SHAPES)
def test_a_transfer_from_an_earlier_block_is_refused(shape: Any) -> None:
    check = judge(positioned(39, 0), shape, paid_at=PaymentPosition(40, 0))
    assert not check.accepted
    assert "mined in block 39, before the payment's own transfer (block 40)" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_earlier_in_the_same_block_is_refused_later_is_accepted(shape: Any) -> None:
    paid = PaymentPosition(40, 3)
    assert not judge(positioned(40, 2), shape, paid_at=paid).accepted
    assert judge(positioned(40, 4), shape, paid_at=paid).accepted
    # The payment's own index (never the refund in practice) and unknown indexes pass.
    assert judge(positioned(40, 3), shape, paid_at=paid).accepted
    assert judge(positioned(40, None), shape, paid_at=paid).accepted
    assert judge(positioned(40, 0), shape, paid_at=PaymentPosition(40)).accepted


def test_a_later_block_is_accepted_whatever_its_index() -> None:
    assert judge(positioned(41, 0), paid_at=PaymentPosition(40, 9)).accepted


def test_without_the_payments_block_its_creation_time_bounds_the_refund() -> None:
    made = int(T0.timestamp())
    paid = PaymentPosition(not_before=made)
    check = judge(positioned(40, 0), paid_at=paid, block_time=made - 1)
    assert not check.accepted and "before the payment was made" in check.reason
    assert judge(positioned(40, 0), paid_at=paid, block_time=made).accepted
    # Nothing known about the payment's time: nothing to refuse on.
    assert judge(positioned(40, 0), paid_at=paid).accepted
    assert judge(positioned(40, 0), paid_at=PaymentPosition(), block_time=0).accepted


def test_unreadable_transaction_index_is_refused() -> None:
    raw = positioned(40, 0)
    raw["transactionIndex"] = "first"
    check = judge(raw, paid_at=PaymentPosition(40, 0))
    assert not check.accepted and "unreadable" in check.reason


# Acceptance


@pytest.mark.parametrize("shape", SHAPES)
def test_right_refund_is_accepted(shape: Any) -> None:
    check = judge(receipt(transfer(PAY_TO, PAYER, AMOUNT), block=40), shape, latest_block=40)
    assert check.accepted
    assert (check.block_number, check.amount) == (40, AMOUNT)
    assert "block 40" in check.reason


@pytest.mark.parametrize("shape", SHAPES)
def test_refund_among_other_logs_and_above_the_amount_is_accepted(shape: Any) -> None:
    raw = receipt(
        transfer(PAY_TO, PAYER, AMOUNT, token=OTHER_TOKEN),
        transfer(PAY_TO, STRANGER, 5 * AMOUNT),
        transfer(PAY_TO, PAYER, AMOUNT + 1),
    )
    check = judge(raw, shape)
    assert check.accepted and check.amount == AMOUNT + 1


def test_addresses_match_in_any_case() -> None:
    record = make_record(pay_to=PAY_TO.upper().replace("0X", "0x"), asset=TOKEN.upper())
    check = judge_refund(record, REFUND_TX, receipt(transfer(PAY_TO, PAYER, AMOUNT)))
    assert check.accepted


# The task after a refund


def test_refunded_task_metadata() -> None:
    record = make_record()
    task = Task(
        id="task-1",
        status=TaskStatus(state=TaskState.FAILED, timestamp=T0),
        metadata={META_STATUS: "payment-orphaned", META_ERROR: "old", "other": 1},
    )
    refund = Refund(REFUND_TX, str(AMOUNT), T0, block_number=40, checked_on_chain=True)
    updated = refunded_task(task, record, refund)
    assert updated.metadata[META_STATUS] == "payment-refunded"
    assert updated.metadata[META_REFUND] == {"transaction": REFUND_TX, "amount": str(AMOUNT)}
    assert record.receipt is not None
    assert updated.metadata[META_RECEIPTS] == [record.receipt.to_json()]
    assert META_ERROR not in updated.metadata and updated.metadata["other"] == 1
    assert task.metadata[META_STATUS] == "payment-orphaned"  # the original is untouched
    assert updated.state is TaskState.FAILED


# The RPC


async def test_unreachable_rpc_refuses() -> None:
    check = await check_refund_on_chain("http://127.0.0.1:9", make_record(), REFUND_TX, timeout=2.0)
    assert not check.accepted and check.reason.startswith(f"cannot check {REFUND_TX}")
    assert "\n" not in check.reason
