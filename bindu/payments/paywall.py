"""The x402 paywall: 402 answers, header decoding, the durable nonce claim, ``/verify``.

Order matters, cheapest first, so a bad payment costs us as little as possible:

1. a client whose refusal budget is spent gets 429 before its header is even decoded;
2. decoding and the local checks (recipient, amount, validity window) and the EIP-712
   signature (``signature.check_signature``): a forged payment stops here, having cost one
   CPU check; no storage write, no facilitator call;
3. the EIP-3009 nonce is claimed in storage *before* ``/verify`` so a replay is refused
   across restarts and across replicas sharing a database; a claim whose ``/verify`` fails
   is released (no money can move from a refused payment).

Refusals draw on token buckets (``ratelimit``): always the client's; the payer's only when
the signature proved the payer signed it and the nonce was new (a replayed or forged
payment naming someone must not lock that someone out). Smart-wallet signatures, which only
the chain can judge, reach the facilitator through one server-wide bucket, charged to the
client up front and given back when the facilitator accepts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
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
from x402.http.utils import encode_payment_required_header
from x402.mechanisms.evm.constants import ERR_INVALID_SIGNATURE
from x402.mechanisms.evm.exact import register_exact_evm_server
from x402.mechanisms.evm.types import ExactEIP3009Payload
from x402.schemas import PaymentPayload, PaymentRequirements, ResourceConfig, ResourceInfo

from bindu.a2a import new_id
from bindu.failpoints import failpoint
from bindu.jsontext import JsonRefused, strict_loads
from bindu.payments.ratelimit import Clock, RefusalLimits
from bindu.payments.records import PaymentRecord, PaymentStatus, wire
from bindu.payments.settle import SettleOutcome, settle_listening, verify_refusal
from bindu.payments.signature import SignatureCheck, check_signature
from bindu.settings import X402Settings
from bindu.storage.base import Storage

# validBefore must leave the facilitator room to settle (the SDK itself demands 6 s).
MIN_VALIDITY_LEFT_SECONDS = 6
# Tolerated difference between the payer's clock and ours when checking validBefore (s).
CLOCK_SKEW_SECONDS = 60
# The client key when the caller does not say who the client is.
UNKNOWN_CLIENT = "unknown"
REPLAYED = "payment authorization already used (replay)"
SMART_WALLET_BUCKET = "all"
# A v2 payment payload nests about 5 deep; far deeper is hostile.
PAYMENT_HEADER_MAX_DEPTH = 32


@dataclass(frozen=True)
class Refusal:
    """Why a request gets no work: 402 (payment problem), 429 (too many refused payments;
    ``retry_after`` seconds, ``scope`` says whose budget) or 503 (facilitator unreachable)."""

    status: int
    reason: str
    retry_after: float | None = None
    scope: str | None = None


@dataclass(frozen=True)
class _Checked:
    """A payment that passed every local check; its signature ``SIGNED`` or ``UNVERIFIABLE``."""

    payload: PaymentPayload
    requirements: PaymentRequirements
    inner: ExactEIP3009Payload
    signature: SignatureCheck


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
        *,
        clock: Clock | None = None,
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
        self.limits = RefusalLimits(settings.rate_limit, clock or time.monotonic)

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
        body = wire(required)
        return body, {PAYMENT_REQUIRED_HEADER: encode_payment_required_header(required)}

    def throttled(self, client: str) -> Refusal | None:
        """429 when ``client`` has spent its refusal budget: checked before anything of the
        request is decoded."""
        wait = self.limits.clients.wait(client)
        if wait <= 0:
            return None
        return Refusal(
            429, "too many refused payments from this address", retry_after=wait, scope="client"
        )

    async def admit(
        self,
        headers: Mapping[str, str],
        task_id: str,
        now: datetime,
        client: str = UNKNOWN_CLIENT,
    ) -> Admission | Refusal:
        raw = headers.get(PAYMENT_SIGNATURE_HEADER) or headers.get(X_PAYMENT_HEADER)
        if not raw:
            return Refusal(402, "payment required")
        throttled = self.throttled(client)
        if throttled is not None:
            return throttled
        checked = self._check_locally(raw, int(now.timestamp()))
        if isinstance(checked, Refusal):
            self.limits.clients.charge(client)
            return checked
        if checked.signature is SignatureCheck.UNVERIFIABLE:
            return await self._admit_smart_wallet(checked, task_id, now, client)
        payer = checked.inner.authorization.from_address.lower()
        wait = self.limits.payers.wait(payer)
        if wait > 0:
            return Refusal(
                429, "too many refused payments by this payer", retry_after=wait, scope="payer"
            )
        outcome = await self._claim_and_verify(checked, task_id, now)
        if isinstance(outcome, Refusal) and outcome.status == 402:
            self.limits.clients.charge(client)
            # A replay proves nothing about who sent it: it must not lock the payer out.
            if outcome.reason != REPLAYED:
                self.limits.payers.charge(payer)
        return outcome

    async def _admit_smart_wallet(
        self, checked: _Checked, task_id: str, now: datetime, client: str
    ) -> Admission | Refusal:
        """A signature only the chain can judge: the facilitator is asked, but rationed by one
        server-wide bucket, and the attempt is charged to the client up front (given back
        unless refused) so concurrent attempts cannot all slip past the limit."""
        smart = self.limits.smart_wallets
        if smart is None:
            self.limits.clients.charge(client)
            return Refusal(402, "payment invalid: smart-wallet signatures are not accepted")
        wait = smart.wait(SMART_WALLET_BUCKET)
        if wait > 0:
            return Refusal(
                429,
                "too many smart-wallet payments awaiting the facilitator",
                retry_after=wait,
                scope="smart-wallet",
            )
        smart.charge(SMART_WALLET_BUCKET)
        self.limits.clients.charge(client)
        outcome = await self._claim_and_verify(checked, task_id, now)
        if isinstance(outcome, Admission) or outcome.status != 402:
            smart.refund(SMART_WALLET_BUCKET)
            self.limits.clients.refund(client)
        return outcome

    def _check_locally(self, raw: str, now: int) -> _Checked | Refusal:
        """Everything judged without I/O, cheapest first: the header, the requirements, the
        authorization's fields (validity window against ``now``, unix seconds), then the
        signature (a forged one is refused here)."""
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
        problem = self._check_authorization(inner, requirements, now)
        if problem:
            return Refusal(402, problem)
        signature = check_signature(inner.authorization, inner.signature, requirements)
        if signature is SignatureCheck.FORGED:
            return Refusal(402, f"payment invalid: {ERR_INVALID_SIGNATURE}")
        return _Checked(payload, requirements, inner, signature)

    async def _claim_and_verify(
        self, checked: _Checked, task_id: str, now: datetime
    ) -> Admission | Refusal:
        payload, requirements = checked.payload, checked.requirements
        record = new_record(payload, requirements, task_id, now)
        if not await self._storage.claim_payment(record):
            logger.info("x402 replay refused: payer={} nonce={}", record.payer, record.nonce)
            return Refusal(402, REPLAYED)
        await failpoint("after-claim")
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
            logger.warning("x402 verify unavailable: {}: {}", type(exc).__name__, str(exc)[:200])
            return Refusal(503, "payment facilitator unavailable; nothing was charged")
        if not verified.verify.is_valid:
            await self._storage.release_claim(record.id)
            reason = verified.verify.invalid_reason or "invalid payment"
            logger.info("x402 verify refused: payer={} reason={}", record.payer, reason)
            return Refusal(402, f"payment invalid: {reason}")
        await failpoint("after-verify")
        return Admission(record=record, payload=payload, requirements=requirements)

    def _check_authorization(
        self, inner: ExactEIP3009Payload, requirements: PaymentRequirements, now: int
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
    ) -> tuple[SettleOutcome, asyncio.Task[SettleOutcome | None] | None]:
        """The outcome within the settle deadline, and (when it passed unanswered) a task
        resolving to the late answer within ``X402__LATE_ANSWER_SECONDS``."""
        return await settle_listening(
            self._server.settle_payment(payload, requirements),
            self.settings.settle_timeout_seconds,
            late_seconds=self.settings.late_answer_seconds,
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
        payload=wire(payload),
        requirements=wire(requirements),
        created_at=now,
        updated_at=now,
    )


def _decode(raw: str) -> PaymentPayload | Refusal:
    # The SDK's decode_payment_signature_header is base64 + json.loads + model_validate;
    # done here with strict_loads so a hostile header cannot nest deep (a C-stack overflow),
    # carry lone surrogates into a stored record, or raise past 4,300 digits.
    try:
        text = base64.b64decode(raw.encode("utf-8"), validate=False)
    except (binascii.Error, UnicodeEncodeError):
        return Refusal(402, "malformed payment header: invalid base64")
    try:
        data = strict_loads(text, max_depth=PAYMENT_HEADER_MAX_DEPTH)
    except JsonRefused as exc:
        kind = "base64" if exc.problem == "syntax" and not _utf8(text) else "JSON"
        return Refusal(402, f"malformed payment header: invalid {kind}")
    if not isinstance(data, dict):
        return Refusal(402, "malformed payment header: not an x402 payment payload")
    if data.get("x402Version") == 1:
        return Refusal(402, "x402 v1 payment payloads are not accepted; send x402Version 2")
    try:
        return PaymentPayload.model_validate(data)
    except (ValueError, TypeError):  # pydantic's ValidationError is a ValueError
        return Refusal(402, "malformed payment header: invalid content")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _authorization(payload: PaymentPayload) -> ExactEIP3009Payload | Refusal:
    malformed = Refusal(402, "malformed payment: not an EIP-3009 authorization")
    try:
        inner = ExactEIP3009Payload.from_dict(payload.payload)
    except (KeyError, TypeError, ValueError, AttributeError, ValidationError):
        return malformed
    auth = inner.authorization
    if not all(isinstance(v, str) for v in (auth.from_address, auth.to, auth.nonce)):
        return malformed
    return inner
