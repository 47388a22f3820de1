"""JSON-RPC 2.0 framing: parse a request body, build results and errors.

Malformed input becomes a JSON-RPC error object, never an exception that escapes. The
body is screened before ``json.loads`` (nesting depth) and after it (numbers, lone
surrogates, ids), so nothing hostile reaches a handler or a write.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from bindu.a2a import MAX_ID_LENGTH

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

RequestId = str | int | None

# Integer ids must fit a signed 64-bit column or variable on the client's side.
MAX_INTEGER_ID = 2**63 - 1
# Longer integer literals are refused while parsing: Python's own guard (4,300 digits)
# raises a ValueError that json does not wrap, and no field of ours needs more.
MAX_INTEGER_DIGITS = 64
# Only this much of an unknown method name is echoed back in the error.
ECHO_CHARS = 64

# One JSON string, closed or running to the end of the body; possessive, so a failed
# match never backtracks (a body of 1 MB of quotes and backslashes stays linear).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")
# A \u escape in the high or low surrogate range: the only way a lone surrogate gets
# past a strict UTF-8 decode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


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


class _Refused(ValueError):
    """A literal json accepts but we do not (NaN, infinities, endless integers)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether any array/object in ``body`` nests deeper than ``limit`` (strings skipped).

    Runs before ``json.loads``, whose C parser recurses once per level. Unbalanced
    brackets count as nesting: such a body is refused either way.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    skeleton = _STRING.sub(b"", body).translate(None, _NOT_BRACKET)
    depth = 0
    for byte in skeleton:
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _refuse_constant(name: str) -> Any:
    raise _Refused(PARSE_ERROR, f"Parse error: {name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(INVALID_REQUEST, "Invalid Request: number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Refused(INVALID_REQUEST, "Invalid Request: integer too long")
    return int(text)


def _unencodable_path(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where the first string (key or value) that UTF-8 cannot encode sits, if any."""
    if isinstance(value, str):
        return None if _encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                return (*path, "<key>")
            found = _unencodable_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unencodable_path(item, (*path, str(index)))
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_unicode(text: str, doc: Any) -> None:
    if not _SURROGATE_ESCAPE.search(text):
        return
    path = _unencodable_path(doc)
    if path is None:
        return
    where = ".".join(path[:8])[:200]
    if len(path) > 1 and path[0] == "params":
        raise RpcError(
            INVALID_PARAMS,
            f"Invalid params: {where}: string is not valid Unicode (lone surrogate)",
            request_id=_safe_id(doc),
        )
    raise RpcError(
        INVALID_REQUEST, f"Invalid Request: {where}: string is not valid Unicode (lone surrogate)"
    )


def _safe_id(doc: Any) -> RequestId:
    """The request id if it can be echoed back as is, else None."""
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
        len(request_id) > MAX_ID_LENGTH or not _encodable(request_id)
    ):
        raise RpcError(
            INVALID_REQUEST,
            f"Invalid Request: id must be at most {MAX_ID_LENGTH} characters of valid Unicode",
        )
    return request_id


def parse_request(body: bytes, *, max_depth: int = 32) -> RpcRequest:
    """Parse one JSON-RPC request (batches are not supported: A2A does not use them)."""
    if nested_deeper_than(body, max_depth):
        raise RpcError(INVALID_REQUEST, f"Invalid Request: nested deeper than {max_depth} levels")
    try:
        # Strict UTF-8: json.loads(bytes) would also take UTF-16/32 and encoded surrogates.
        text = body.decode("utf-8")
        doc = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except _Refused as exc:
        raise RpcError(exc.code, str(exc)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RpcError(PARSE_ERROR, f"Parse error: {exc}") from None
    except RecursionError:  # unreachable below the depth limit; never a crash if it is not
        raise RpcError(INVALID_REQUEST, "Invalid Request: nested too deeply") from None
    if not isinstance(doc, dict):
        raise RpcError(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    _check_unicode(text, doc)
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


def dump(doc: Any) -> bytes:
    """Encode a response; values that JSON or UTF-8 cannot carry are replaced, not fatal.

    Input is screened, but a stored task may predate that (or an agent may produce a lone
    surrogate): one such task must not break ``tasks/list`` for everyone.
    """
    try:
        return _dumps(doc)
    except (UnicodeEncodeError, ValueError, RecursionError):
        return _dumps(_clean(doc, 0))


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


# Responses nest far less than this; deeper stored values are cut rather than recursed into.
_CLEAN_DEPTH = 64


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return value if _encodable(value) else _replace_surrogates(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if depth >= _CLEAN_DEPTH:
        return None if isinstance(value, dict | list | tuple) else value
    if isinstance(value, dict):
        return {_clean(str(k), depth): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value]
    return value


def _replace_surrogates(text: str) -> str:
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
