"""JSON-RPC 2.0 framing: parse a request body, build results and errors.

Malformed input becomes a JSON-RPC error object, never an exception that escapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# A2A-specific codes.
TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002
UNSUPPORTED_OPERATION = -32004
# bindu: the payment facilitator could not be reached; nothing was charged.
PAYMENT_UNAVAILABLE = -32010

RequestId = str | int | None


@dataclass(frozen=True)
class RpcRequest:
    id: RequestId
    method: str
    params: dict[str, Any]


class RpcError(Exception):
    """An error to answer with; raised by handlers, rendered by the endpoint."""

    def __init__(
        self, code: int, message: str, data: Any = None, *, request_id: RequestId = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.request_id = request_id


def parse_request(body: bytes) -> RpcRequest:
    """Parse one JSON-RPC request (batches are not supported: A2A does not use them)."""
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    request_id = doc.get("id")
    if request_id is not None and (
        isinstance(request_id, bool) or not isinstance(request_id, str | int)
    ):
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    if doc.get("jsonrpc") != "2.0":
        raise RpcError(
            INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', request_id=request_id
        )
    method = doc.get("method")
    if not isinstance(method, str) or not method:
        raise RpcError(
            INVALID_REQUEST, 'Invalid Request: "method" must be a string', request_id=request_id
        )
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise RpcError(
            INVALID_PARAMS, 'Invalid params: "params" must be an object', request_id=request_id
        )
    return RpcRequest(id=request_id, method=method, params=params)


def result(request_id: RequestId, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: RequestId, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": err}
