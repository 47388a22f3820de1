"""The x402 paywall: 402 answers, header decoding, the durable nonce claim, ``/verify``.

Order matters: the EIP-3009 nonce is claimed in storage *before* ``/verify`` so a replay
is refused across restarts and across replicas sharing a database; a claim whose
``/verify`` fails is released (no money can move from a refused payment).
"""

from __future__ import annotations

import asyncio
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loguru import logger
from pydantic import ValidationError
from x402 import x402ResourceServer
from x402.http import HTTPFacilitatorClient
from x402.http.constants import PAYMENT_REQUIRED_HEADER, PAYMENT_SIGNATURE_HEADER, X_PAYMENT_HEADER
from x402.http.utils import decode_payment_signature_header, encode_payment_required_header
from x402.mechanisms.evm.exact import register_exact_evm_server
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.schemas import PaymentPayload, PaymentRequirements, ResourceConfig, ResourceInfo

from bindu.a2a import new_id
from bindu.payments.records import PaymentRecord, PaymentStatus
from bindu.payments.settle import SettleOutcome, settle_with_deadline, verify_refusal
from bindu.settings import X402Settings
from bindu.storage.base import Storage

# validBefore must leave the facilitator room to settle (the SDK itself demands 6 s).
MIN_VALIDITY_LEFT_SECONDS = 6
# Tolerated difference between the payer's clock and ours when checking validBefore (s).
CLOCK_SKEW_SECONDS = 60


@dataclass(frozen=True)
class Refusal:
    """Why a request gets no work: 402 (payment problem) or 503 (facilitator unreachable)."""

    status: int
    reason: str


@dataclass(frozen=True)
class Admission:
    """A verified payment whose record is claimed in storage (status ``claimed``)."""

    record: PaymentRecord
    payload: PaymentPayload
    requirements: PaymentRequirements


class Paywall:
    def __init__(
        self,
        settings: X402Settings,
        storage: Storage,
        facilitator: HTTPFacilitatorClient,
        resource_url: str,
    ) -> None:
        self.settings = settings
        self._storage = storage
        self.facilitator = facilitator
        self._resource = ResourceInfo(
            url=resource_url, description="A2A message/send", mime_type="application/json"
        )
        self._server = x402ResourceServer(facilitator)
        register_exact_evm_server(self._server, networks=settings.network)
        self._requirements: list[PaymentRequirements] | None = None
        self._init_lock = asyncio.Lock()

    async def ready(self) -> bool:
        """Fetch ``/supported`` once (retried on later calls while the facilitator is down)."""
        if self._requirements is not None:
            return True
        async with self._init_lock:
            if self._requirements is not None:
                return True
            try:
                # initialize() is synchronous in the SDK (it calls /supported with httpx.Client).
                await asyncio.to_thread(self._server.initialize)
                self._requirements = self._server.build_payment_requirements(self._config())
            except Exception as exc:
                logger.warning("x402 facilitator not ready: {}", exc)
                return False
        logger.info(
            "x402 paywall ready: network={} asset={} amount={} pay_to={}",
            self.settings.network,
            self.settings.asset,
            self.settings.amount,
            self.settings.pay_to,
        )
        return True

    def _config(self) -> ResourceConfig:
        s = self.settings
        return ResourceConfig(
            scheme="exact",
            pay_to=s.pay_to or "",
            network=s.network,
            max_timeout_seconds=s.max_timeout_seconds,
            price={
                "amount": str(s.amount),
                "asset": s.asset or "",
                "extra": {"name": s.asset_name, "version": s.asset_version},
            },
        )

    @property
    def requirements(self) -> list[PaymentRequirements]:
        if self._requirements is None:
            raise RuntimeError("paywall not ready")
        return self._requirements

    async def payment_required(self, error: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The x402 v2 PaymentRequired body and its ``PAYMENT-REQUIRED`` header."""
        required = await self._server.create_payment_required_response(
            self.requirements, self._resource, error
        )
        body = required.model_dump(mode="json", by_alias=True, exclude_none=True)
        return body, {PAYMENT_REQUIRED_HEADER: encode_payment_required_header(required)}

    async def admit(
        self, headers: Mapping[str, str], task_id: str, now: datetime
    ) -> Admission | Refusal:
        raw = headers.get(PAYMENT_SIGNATURE_HEADER) or headers.get(X_PAYMENT_HEADER)
        if not raw:
            return Refusal(402, "payment required")
        decoded = _decode(raw)
        if isinstance(decoded, Refusal):
            return decoded
        payload = decoded
        requirements = self._server.find_matching_requirements(self.requirements, payload)
        if requirements is None:
            return Refusal(402, "payment does not match the accepted requirements")
        inner = _authorization(payload)
        if isinstance(inner, Refusal):
            return inner
        problem = self._check_authorization(inner, requirements)
        if problem:
            return Refusal(402, problem)
        record = new_record(payload, requirements, task_id, now)
        if not await self._storage.claim_payment(record):
            logger.info("x402 replay refused: payer={} nonce={}", record.payer, record.nonce)
            return Refusal(402, "payment authorization already used (replay)")
        try:
            verified = await asyncio.wait_for(
                self._server.verify_payment(payload, requirements),
                self.settings.verify_timeout_seconds,
            )
        except Exception as exc:
            await self._storage.release_claim(record.id)
            refused = verify_refusal(exc)
            if refused is not None:
                logger.info("x402 verify refused: payer={} reason={}", record.payer, refused)
                return Refusal(402, f"payment invalid: {refused}")
            logger.warning("x402 verify unavailable: {}", _short(exc))
            return Refusal(503, "payment facilitator unavailable; nothing was charged")
        if not verified.verify.is_valid:
            await self._storage.release_claim(record.id)
            reason = verified.verify.invalid_reason or "invalid payment"
            logger.info("x402 verify refused: payer={} reason={}", record.payer, reason)
            return Refusal(402, f"payment invalid: {reason}")
        return Admission(record=record, payload=payload, requirements=requirements)

    def _check_authorization(
        self, inner: ExactEIP3009Payload, requirements: PaymentRequirements
    ) -> str | None:
        # Checked here too, so an obviously wrong payment never reaches the facilitator.
        auth = inner.authorization
        try:
            value, valid_after, valid_before = (
                int(auth.value),
                int(auth.valid_after),
                int(auth.valid_before),
            )
            int(auth.nonce, 16)
        except (TypeError, ValueError):
            return "malformed payment: authorization fields must be integers and a hex nonce"
        if len(auth.nonce) != 66 or not auth.nonce.startswith("0x"):
            return "malformed payment: nonce must be 32 bytes of hex"
        if not inner.signature:
            return "malformed payment: signature missing"
        if auth.to.lower() != requirements.pay_to.lower():
            return "payment invalid: authorization pays the wrong recipient"
        if value != int(requirements.amount):
            return "payment invalid: authorization value does not match the price"
        now = int(time.time())
        if valid_before < now + MIN_VALIDITY_LEFT_SECONDS:
            return "payment invalid: authorization expired"
        if valid_after > now:
            return "payment invalid: authorization not yet valid"
        # Bounds how long the reconciler may have to wait before "unused" becomes proof.
        if valid_before > now + requirements.max_timeout_seconds + CLOCK_SKEW_SECONDS:
            return "payment invalid: authorization valid longer than maxTimeoutSeconds"
        return None

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleOutcome:
        return await settle_with_deadline(
            self._server.settle_payment(payload, requirements),
            self.settings.settle_timeout_seconds,
        )


def new_record(
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    task_id: str,
    now: datetime,
) -> PaymentRecord:
    """The record of a payment about to be verified (status ``claimed``); addresses and
    nonce lower-cased, so the (network, asset, payer, nonce) key matches however written."""
    auth = ExactEIP3009Payload.from_dict(payload.payload).authorization
    return PaymentRecord(
        id=new_id(),
        task_id=task_id,
        status=PaymentStatus.CLAIMED,
        network=requirements.network,
        asset=requirements.asset.lower(),
        pay_to=requirements.pay_to.lower(),
        payer=auth.from_address.lower(),
        amount=str(auth.value),
        nonce=auth.nonce.lower(),
        valid_after=int(auth.valid_after),
        valid_before=int(auth.valid_before),
        payload=payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        requirements=requirements.model_dump(mode="json", by_alias=True, exclude_none=True),
        created_at=now,
        updated_at=now,
    )


def _decode(raw: str) -> PaymentPayload | Refusal:
    try:
        payload = decode_payment_signature_header(raw)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        # ValidationError and JSONDecodeError are ValueErrors too.
        kind = "JSON" if isinstance(exc, json.JSONDecodeError) else "content"
        if isinstance(exc, binascii.Error | UnicodeDecodeError):
            kind = "base64"
        return Refusal(402, f"malformed payment header: invalid {kind}")
    except (TypeError, AttributeError):
        return Refusal(402, "malformed payment header: not an x402 payment payload")
    if not isinstance(payload, PaymentPayload):
        return Refusal(402, "x402 v1 payment payloads are not accepted; send x402Version 2")
    return payload


def _authorization(payload: PaymentPayload) -> ExactEIP3009Payload | Refusal:
    try:
        inner = ExactEIP3009Payload.from_dict(payload.payload)
        if not all(
            isinstance(v, str)
            for v in (
                inner.authorization.from_address,
                inner.authorization.to,
                inner.authorization.nonce,
            )
        ):
            raise TypeError("authorization fields must be strings")
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError):
        return Refusal(402, "malformed payment: not an EIP-3009 authorization")
    return inner


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]
