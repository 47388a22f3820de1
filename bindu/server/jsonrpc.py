"""JSON-RPC 2.0 framing: parse a request body, build results and errors.

Malformed input becomes a JSON-RPC error object, never an exception that escapes. The
body is screened before ``json.loads`` (nesting depth) and after it (numbers, lone
surrogates, ids), so nothing hostile reaches a handler or a write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bindu.a2a import MAX_ID_LENGTH
from bindu.jsontext import JsonRefused, encodable, strict_loads
from bindu.jsontext import dump as dump

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
# bindu: too many refused payments from this client or payer (HTTP 429, Retry-After).
RATE_LIMITED = -32011
# bindu: no new work now (queue full, or shutting down); retry later. Nothing was charged.
SERVER_BUSY = -32012
# bindu: credentials missing or refused (HTTP 401), or not checkable right now (HTTP 503).
UNAUTHENTICATED = -32030
AUTH_UNAVAILABLE = -32031

RequestId = str | int | None

# Integer ids must fit a signed 64-bit column or variable on the client's side.
MAX_INTEGER_ID = 2**63 - 1
# Only this much of an unknown method name is echoed back in the error.
ECHO_CHARS = 64


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


def _refusal(exc: JsonRefused, doc_id: RequestId) -> RpcError:
    if exc.problem == "syntax":
        return RpcError(PARSE_ERROR, f"Parse error: {exc}")
    if exc.problem == "unicode":
        where = ".".join(exc.path[:8])[:200]
        if len(exc.path) > 1 and exc.path[0] == "params":
            return RpcError(INVALID_PARAMS, f"Invalid params: {where}: {exc}", request_id=doc_id)
        return RpcError(INVALID_REQUEST, f"Invalid Request: {where}: {exc}")
    return RpcError(INVALID_REQUEST, f"Invalid Request: {exc}")


def _safe_id(doc: Any) -> RequestId:
    """The request id if it can be echoed back as is, else None."""
    if not isinstance(doc, dict):
        return None
    try:
        return _request_id(doc)
    except RpcError:
        return None


def _request_id(doc: dict[str, Any]) -> RequestId:
    request_id = doc.get("id")
    if request_id is None:
        return None
    if isinstance(request_id, bool) or not isinstance(request_id, str | int):
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must be a string, number or null")
    if isinstance(request_id, int) and abs(request_id) > MAX_INTEGER_ID:
        raise RpcError(INVALID_REQUEST, "Invalid Request: id must fit in 64 bits")
    if isinstance(request_id, str) and (
        len(request_id) > MAX_ID_LENGTH or not encodable(request_id)
    ):
        raise RpcError(
            INVALID_REQUEST,
            f"Invalid Request: id must be at most {MAX_ID_LENGTH} characters of valid Unicode",
        )
    return request_id


def parse_request(body: bytes, *, max_depth: int = 32) -> RpcRequest:
    """Parse one JSON-RPC request (batches are not supported: A2A does not use them)."""
    try:
        doc = strict_loads(body, max_depth=max_depth)
    except JsonRefused as exc:
        # A bad string inside params still leaves a usable id.
        raise _refusal(exc, _safe_id(exc.doc)) from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    request_id = _request_id(doc)
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


def method_not_found(method: str) -> RpcError:
    shown = method if len(method) <= ECHO_CHARS else method[:ECHO_CHARS] + "…"
    return RpcError(METHOD_NOT_FOUND, f"Method not found: {shown}")


def result(request_id: RequestId, value: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": value}


def error(request_id: RequestId, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": err}
