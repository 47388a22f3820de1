"""The x402 SDK's own facilitator, served over HTTP for the devnet, with a fault switch.

Wire format as hosted facilitators speak it: `POST /verify` and `POST /settle` take
`{"x402Version", "paymentPayload", "paymentRequirements"}` and answer `VerifyResponse` /
`SettleResponse` JSON; `GET /supported` answers `SupportedResponse`. The SDK's facilitator is
synchronous (web3 over HTTP, and settle blocks on the receipt), so it runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from loguru import logger
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from x402 import x402FacilitatorSync
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
from x402.schemas import PaymentPayload, PaymentRequirements, SchemeNotFoundError
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from bindu.devnet.errors import DevnetError
from bindu.devnet.faults import FacilitatorStats, FaultSwitch
from bindu.server.embedded import bind, serving

SETTLEMENT_PENDING = "settlement_pending"
# What `malformed_json` answers: what a misbehaving proxy in front of a facilitator might send.
MALFORMED_BODY = "<html><body>502 Bad Gateway</body></html>"

_ModelT = TypeVar("_ModelT", bound=BaseModel)
Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1


class BadRequest(Exception):
    """The request body is not a facilitator request; answered with 400."""


def build_facilitator(
    private_key: str, rpc_url: str, network: str, confirmation_timeout_seconds: float
) -> x402FacilitatorSync:
    """The SDK facilitator for the exact EVM scheme on one network, signing with `private_key`."""
    signer = FacilitatorWeb3Signer(
        private_key, rpc_url, confirmation_timeout_seconds=confirmation_timeout_seconds
    )
    facilitator = x402FacilitatorSync()
    register_exact_evm_facilitator(facilitator, signer, networks=network)
    return facilitator


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _dump(model: BaseModel) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def _parse(request: Request) -> tuple[Payload, Requirements]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("body is not JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    raw_payload, raw_requirements = body.get("paymentPayload"), body.get("paymentRequirements")
    if not isinstance(raw_payload, dict) or not isinstance(raw_requirements, dict):
        raise BadRequest("paymentPayload and paymentRequirements must be JSON objects")
    version = body.get("x402Version", raw_payload.get("x402Version", 2))
    if version == 1:
        return (
            _validate(PaymentPayloadV1, raw_payload, "paymentPayload"),
            _validate(PaymentRequirementsV1, raw_requirements, "paymentRequirements"),
        )
    if version == 2:
        return (
            _validate(PaymentPayload, raw_payload, "paymentPayload"),
            _validate(PaymentRequirements, raw_requirements, "paymentRequirements"),
        )
    raise BadRequest(f"unsupported x402Version {version!r}")


def _validate(model: type[_ModelT], raw: dict[str, Any], name: str) -> _ModelT:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # Field locations only: never echo the input, it holds the signature.
        problems = exc.errors(include_url=False, include_context=False, include_input=False)
        fields = ", ".join(".".join((name, *map(str, p["loc"]))) for p in problems)
        raise BadRequest(f"invalid {name}: {fields}") from exc


# Sends `amount` atomic token units from the devnet's payee to `to`; returns the tx hash.
PayeeTransfer = Callable[[str, int], Awaitable[str]]


def create_app(
    facilitator: x402FacilitatorSync,
    faults: FaultSwitch,
    stats: FacilitatorStats,
    payee_transfer: PayeeTransfer | None = None,
) -> Starlette:
    """The facilitator's HTTP face: the three protocol endpoints plus fault and stats control,
    and (devnet only) the payee's wallet, so an operator can send a refund by hand."""

    async def call(method: str, request: Request) -> dict[str, Any] | Response:
        """The SDK's answer as wire JSON, or the error response to send instead.

        The blocking SDK call runs off the event loop. A bad request is a 400; any other
        failure a JSON 500, never a traceback.
        """
        try:
            payload, requirements = await _parse(request)
            fn = facilitator.verify if method == "verify" else facilitator.settle
            result: BaseModel = await asyncio.to_thread(fn, payload, requirements)
        except (BadRequest, SchemeNotFoundError) as exc:
            return _error(400, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            # The SDK parses the scheme payload loosely and raises on unparsable fields.
            return _error(400, f"malformed payment payload: {type(exc).__name__}")
        except Exception as exc:
            logger.error("facilitator {} failed: {}", method, type(exc).__name__)
            return _error(500, f"facilitator {method} failed: {type(exc).__name__}")
        answer: dict[str, Any] = _dump(result)
        return answer

    async def supported(request: Request) -> Response:
        stats.supported += 1
        if faults.unavailable:
            return _error(503, "facilitator unavailable (fault)")
        return JSONResponse(_dump(facilitator.get_supported()))

    async def verify(request: Request) -> Response:
        stats.verify += 1
        if faults.unavailable:
            return _error(503, "facilitator unavailable (fault)")
        if faults.verify_error_status is not None:
            return _error(faults.verify_error_status, "verify failed (fault)")
        if faults.verify_delay_seconds > 0:
            await asyncio.sleep(faults.verify_delay_seconds)
        answer = await call("verify", request)
        if isinstance(answer, Response):
            return answer
        logger.info(
            "facilitator verify: valid={} reason={} payer={}",
            answer.get("isValid"),
            answer.get("invalidReason"),
            answer.get("payer"),
        )
        if faults.malformed_json:
            return Response(MALFORMED_BODY, media_type="text/html")
        return JSONResponse(answer)

    async def settle(request: Request) -> Response:
        stats.settle += 1
        if faults.unavailable:
            return _error(503, "facilitator unavailable (fault)")
        if faults.settle_fail_before_broadcast:
            return _error(500, "settle failed before broadcast (fault)")
        answer = await call("settle", request)
        if isinstance(answer, Response):
            return answer
        logger.info(
            "facilitator settle: success={} reason={} transaction={}",
            answer.get("success"),
            answer.get("errorReason"),
            answer.get("transaction"),
        )
        if answer.get("transaction"):
            stats.settle_transactions.append(answer["transaction"])
        if faults.settle_delay_seconds > 0:
            await asyncio.sleep(faults.settle_delay_seconds)
        if faults.malformed_json:
            return Response(MALFORMED_BODY, media_type="text/html")
        pending = answer.get("errorReason") == SETTLEMENT_PENDING
        status = 500 if pending and faults.pending_as_http_500 else 200
        return JSONResponse(answer, status_code=status)

    async def get_faults(request: Request) -> Response:
        return JSONResponse(faults.to_dict())

    async def set_faults(request: Request) -> Response:
        try:
            changes = await request.json()
        except ValueError:
            return _error(400, "body is not JSON")
        if not isinstance(changes, dict):
            return _error(400, "body must be a JSON object of fault fields")
        try:
            faults.update(changes)
        except ValueError as exc:
            return _error(400, str(exc))
        logger.info("facilitator faults set: {}", faults.to_dict())
        return JSONResponse(faults.to_dict())

    async def reset_faults(request: Request) -> Response:
        faults.reset()
        return JSONResponse(faults.to_dict())

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats.to_dict())

    async def wallet_transfer(request: Request) -> Response:
        if payee_transfer is None:
            return _error(404, "no payee wallet on this facilitator")
        try:
            body = await request.json()
            to, amount = str(body["to"]), int(body["amount"])
        except (ValueError, KeyError, TypeError):
            return _error(400, 'body must be {"to": "0x…", "amount": <atomic units>}')
        if not to.startswith("0x") or len(to) != 42 or amount <= 0:
            return _error(400, "to must be an address and amount positive")
        try:
            tx = await payee_transfer(to, amount)
        except DevnetError as exc:  # e.g. the payee holds less than the amount
            return _error(409, str(exc))
        logger.info("devnet payee sent {} to {}: {}", amount, to, tx)
        return JSONResponse({"transaction": tx})

    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error(500, f"internal error: {type(exc).__name__}")

    return Starlette(
        routes=[
            Route("/supported", supported, methods=["GET"]),
            Route("/verify", verify, methods=["POST"]),
            Route("/settle", settle, methods=["POST"]),
            Route("/_faults", get_faults, methods=["GET"]),
            Route("/_faults", set_faults, methods=["POST"]),
            Route("/_faults/reset", reset_faults, methods=["POST"]),
            Route("/_stats", get_stats, methods=["GET"]),
            Route("/_wallet/transfer", wallet_transfer, methods=["POST"]),
        ],
        exception_handlers={Exception: internal_error},
    )


class FacilitatorServer:
    """Serves `create_app` with uvicorn on 127.0.0.1 (a free port) as a task of the running loop."""

    def __init__(
        self, facilitator: x402FacilitatorSync, payee_transfer: PayeeTransfer | None = None
    ) -> None:
        self.faults = FaultSwitch()
        self.stats = FacilitatorStats()
        self.app = create_app(facilitator, self.faults, self.stats, payee_transfer)
        self.url = ""
        self._stack: contextlib.AsyncExitStack | None = None

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self.url = await stack.enter_async_context(serving(self.app, bind(), lifespan="off"))
        except Exception as exc:
            await stack.aclose()
            raise DevnetError(f"the devnet facilitator did not start: {exc}") from exc
        self._stack = stack
        logger.info("devnet facilitator listening on {}", self.url)

    async def stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
