"""Reading JSON from strangers: bounded nesting, strict UTF-8, no NaN or endless numbers,
no lone surrogates; and writing JSON that never fails on what a stored value holds.

``json.loads`` alone recurses in C once per nesting level (a deep body overflows the stack
when a dependency has raised the recursion limit), decodes UTF-16/32 and encoded
surrogates, accepts NaN, and raises a bare ValueError past 4,300 digits. Everything here
raises ``JsonRefused`` instead, naming what and where.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

# Longer integer literals are refused while parsing: Python's own guard (4,300 digits)
# raises a ValueError json does not wrap, and no field of ours needs more.
MAX_INTEGER_DIGITS = 64

# One JSON string, closed or running to the end of the body; possessive, so a failed
# match never backtracks (a body of 1 MB of quotes and backslashes stays linear).
_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")
# A \u escape in the surrogate range: after a strict UTF-8 decode, the only way a lone
# surrogate gets in.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")

Problem = Literal["depth", "syntax", "number", "unicode"]


class JsonRefused(ValueError):
    """JSON we do not accept. ``path`` locates a bad string (keys show as ``<key>``) in
    ``doc``, the parsed document (for a "unicode" problem only)."""

    def __init__(
        self, problem: Problem, message: str, path: tuple[str, ...] = (), doc: Any = None
    ) -> None:
        super().__init__(message)
        self.problem = problem
        self.path = path
        self.doc = doc


def nested_deeper_than(body: bytes, limit: int) -> bool:
    """Whether any array/object in ``body`` nests deeper than ``limit`` (strings skipped).

    Unbalanced brackets count as nesting: such a body is refused either way.
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


def strict_loads(body: bytes, *, max_depth: int) -> Any:
    """Parse ``body`` or raise JsonRefused; nothing else escapes."""
    if nested_deeper_than(body, max_depth):
        raise JsonRefused("depth", f"nested deeper than {max_depth} levels")
    try:
        # Strict UTF-8: json.loads(bytes) would also take UTF-16/32 and encoded surrogates.
        text = body.decode("utf-8")
        doc = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int
        )
    except JsonRefused:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise JsonRefused("syntax", str(exc)) from None
    except RecursionError:  # unreachable below the depth limit; never a crash if it is not
        raise JsonRefused("depth", "nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        path = unencodable_path(doc)
        if path is not None:
            raise JsonRefused("unicode", "string is not valid Unicode (lone surrogate)", path, doc)
    return doc


def _refuse_constant(name: str) -> Any:
    raise JsonRefused("syntax", f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused("number", "number out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise JsonRefused("number", "integer too long")
    return int(text)


def unencodable_path(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where the first string (key or value) that UTF-8 cannot encode sits, if any."""
    if isinstance(value, str):
        return None if encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            if not encodable(key):
                return (*path, "<key>")
            found = unencodable_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = unencodable_path(item, (*path, str(index)))
            if found is not None:
                return found
    return None


def encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def dump(doc: Any) -> bytes:
    """Encode ``doc``; values that JSON or UTF-8 cannot carry are replaced, not fatal.

    Input is screened, but a stored value may predate that (or an agent may produce a lone
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
        return value if encodable(value) else _replace_surrogates(value)
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
