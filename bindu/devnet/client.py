"""A real paying A2A client: unpaid call, 402, sign with the x402 SDK, paid call."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx
from eth_account.signers.local import LocalAccount
from x402 import x402Client
from x402.client import SpendControls
from x402.extensions.sign_in_with_x import (
    CreateSIWxClientExtensionOptions,
    create_siwx_client_extension,
)
from x402.http.clients import x402HttpxClient
from x402.http.utils import (
    decode_payment_required_header,
    encode_payment_signature_header,
)
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired

from bindu.devnet.errors import DevnetError

PAYMENT_REQUIRED_HEADER = "PAYMENT-REQUIRED"
PAYMENT_SIGNATURE_HEADER = "PAYMENT-SIGNATURE"
HTTP_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class PaidResponse:
    """The final HTTP answer, the payment sent with it (None if unpaid) and the 402 seen."""

    response: httpx.Response
    payment: PaymentPayload | None
    payment_required: PaymentRequired | None


def message_send_params(
    text: str, *, blocking: bool = True, context_id: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "kind": "message",
        "role": "user",
        "parts": [{"kind": "text", "text": text}],
        "messageId": str(uuid.uuid4()),
    }
    if context_id is not None:
        message["contextId"] = context_id
    return {"message": message, "configuration": {"blocking": blocking}}


def parse_payment_required(response: httpx.Response) -> PaymentRequired:
    """The x402 v2 PaymentRequired of a 402: from the PAYMENT-REQUIRED header, else the body."""
    header = response.headers.get(PAYMENT_REQUIRED_HEADER)
    parsed = (
        decode_payment_required_header(header)
        if header
        else PaymentRequired.model_validate(response.json())
    )
    if not isinstance(parsed, PaymentRequired):
        raise DevnetError(f"expected an x402 v2 PaymentRequired, got version {parsed.x402_version}")
    return parsed


class PayingClient:
    """Pays a bindu server's `message/send` with `account`, through the SDK's exact EVM client.

    Spend controls are off by default: the SDK only pays assets it recognises (mainnet and
    testnet USDC) unless told otherwise, and the devnet token is none of them. Pass
    `spend_controls` to test them.
    """

    def __init__(
        self,
        base_url: str,
        account: LocalAccount,
        http: httpx.AsyncClient | None = None,
        *,
        spend_controls: SpendControls | Literal[False] = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.account = account
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        self._x402 = x402Client()
        register_exact_evm_client(self._x402, EthAccountSigner(account))
        self._x402.set_spend_controls(spend_controls)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> PayingClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def rpc(
        self, method: str, params: dict[str, Any], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One JSON-RPC 2.0 call on `POST /`; the raw HTTP response."""
        body = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
        return await self._http.post(f"{self.base_url}/", json=body, headers=headers)

    async def signed_in_rpc(self, method: str, params: dict[str, Any]) -> httpx.Response:
        """One JSON-RPC call as this wallet, through the SDK's own HTTP transport: when the
        server answers 402 with a sign-in-with-x challenge, the SDK's client extension signs
        it and retries with the SIGN-IN-WITH-X header. (An answer that is still a 402 makes
        the SDK try to pay; a sign-in challenge offers nothing to pay, so that raises.)"""
        signer = x402Client()
        signer.register_extension(
            create_siwx_client_extension(
                CreateSIWxClientExtensionOptions(signers=[EthAccountSigner(self.account)])
            )
        )
        body = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method, "params": params}
        async with x402HttpxClient(signer, timeout=HTTP_TIMEOUT_SECONDS) as http:
            response: httpx.Response = await http.post(f"{self.base_url}/", json=body)
        return response

    async def send_text(
        self,
        text: str,
        *,
        blocking: bool = True,
        context_id: str | None = None,
        payment: PaymentPayload | Literal["auto"] | None = "auto",
    ) -> PaidResponse:
        """`message/send` with `text`.

        payment="auto" sends unpaid, and on 402 signs the offered requirements and resends
        the same message with the payment; a PaymentPayload is sent as given (e.g. a replay);
        None sends unpaid only.
        """
        params = message_send_params(text, blocking=blocking, context_id=context_id)
        if isinstance(payment, PaymentPayload):
            response = await self.rpc("message/send", params, self._payment_headers(payment))
            return PaidResponse(response, payment, None)

        response = await self.rpc("message/send", params)
        if response.status_code != 402:
            return PaidResponse(response, None, None)
        required = parse_payment_required(response)
        if payment is None:
            return PaidResponse(response, None, required)

        signed = await self.sign(required)
        response = await self.rpc("message/send", params, self._payment_headers(signed))
        return PaidResponse(response, signed, required)

    async def payment_required(self) -> PaymentRequired:
        """The server's PaymentRequired, from one unpaid `message/send` (which must get 402)."""
        response = await self.rpc("message/send", message_send_params("price?"))
        if response.status_code != 402:
            raise DevnetError(f"expected HTTP 402, got {response.status_code}: {response.text}")
        return parse_payment_required(response)

    async def sign(self, payment_required: PaymentRequired) -> PaymentPayload:
        """A signed EIP-3009 authorization for the first requirement this client can pay."""
        payload = await self._x402.create_payment_payload(payment_required)
        if not isinstance(payload, PaymentPayload):
            raise DevnetError("the SDK returned an x402 v1 payload for a v2 PaymentRequired")
        return payload

    @staticmethod
    def _payment_headers(payment: PaymentPayload) -> dict[str, str]:
        return {PAYMENT_SIGNATURE_HEADER: encode_payment_signature_header(payment)}
