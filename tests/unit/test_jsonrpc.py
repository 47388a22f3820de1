import json

import pytest

from bindu import jsontext
from bindu.server import jsonrpc
from bindu.server.jsonrpc import RpcError, parse_request


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", jsonrpc.PARSE_ERROR),
        (b"\xff\xfe", jsonrpc.PARSE_ERROR),
        (b"[]", jsonrpc.INVALID_REQUEST),
        (b'"x"', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "tasks/get"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": {"a": 1}, "method": "m"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": true, "method": "m"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": [1]}', jsonrpc.INVALID_PARAMS),
    ],
)
def test_malformed_requests(body, code):
    with pytest.raises(RpcError) as info:
        parse_request(body)
    assert info.value.code == code


def test_request_id_is_kept_for_errors():
    with pytest.raises(RpcError) as info:
        parse_request(b'{"jsonrpc": "1.0", "id": "abc", "method": "x"}')
    assert info.value.request_id == "abc"


def test_valid_request():
    req = parse_request(
        b'{"jsonrpc": "2.0", "id": 7, "method": "tasks/get", "params": {"id": "t"}}'
    )
    assert (req.id, req.method, req.params) == (7, "tasks/get", {"id": "t"})


@pytest.mark.parametrize(
    ("body", "deeper"),
    [
        (b"[" * 33, True),
        (b"[" * 32, False),
        (b"[" * 32 + b"]" * 32, False),
        (b'{"a":' * 33 + b"1" + b"}" * 33, True),
        (b'{"a":' * 32 + b"1" + b"}" * 32, False),
        (b"[]" * 10_000, False),
        (b'["' + b"[" * 100 + b'"]', False),  # brackets in a string are text
        (b'["\\"' + b"[" * 100 + b'"]', False),  # an escaped quote does not end the string
        (b'["\\\\"' + b"[" * 40 + b"]", True),  # an escaped backslash does
        (b'"' + b"[" * 100, False),  # an unterminated string runs to the end
        (b'"\\"' * 50_000, False),
    ],
)
def test_nesting_depth(body, deeper):
    assert jsontext.nested_deeper_than(body, 32) is deeper


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[" * 100_000, jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": NaN}}', jsonrpc.PARSE_ERROR),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": -Infinity}}', -32700),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": 1e400}}', -32600),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": ' + b"1" * 65 + b"}}",
            -32600,
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": "\\udc00"}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"\\ud800": 1}}', -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "\\ud800"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": "\\ud800", "method": "m"}', jsonrpc.INVALID_REQUEST),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "m", "p": "\xed\xa0\x80"}', -32700),  # CESU
        (b"\xff\xfe{\x00}\x00", jsonrpc.PARSE_ERROR),  # UTF-16 is not taken
        (b'{"jsonrpc": "2.0", "id": 9223372036854775808, "method": "m"}', -32600),
        (b'{"jsonrpc": "2.0", "id": "' + b"x" * 257 + b'", "method": "m"}', -32600),
    ],
)
def test_hostile_bodies(body, code):
    with pytest.raises(RpcError) as info:
        parse_request(body)
    assert info.value.code == code


def test_a_surrogate_pair_is_fine_and_the_id_is_echoed_for_bad_params():
    req = parse_request(
        b'{"jsonrpc": "2.0", "id": "a", "method": "m", "params": {"e": "\\ud83d\\ude00"}}'
    )
    assert req.params == {"e": "\U0001f600"}
    with pytest.raises(RpcError) as info:
        parse_request(b'{"jsonrpc": "2.0", "id": "a", "method": "m", "params": {"e": ["\\ud83d"]}}')
    assert info.value.request_id == "a"
    assert "params.e.0" in info.value.message


def test_dump_replaces_what_cannot_be_encoded():
    doc = {"t": "a\ud800b", "n": float("nan"), "k\udfff": [float("inf"), 1.5]}
    assert json.loads(jsontext.dump(doc)) == {"t": "a\ufffdb", "n": None, "k\ufffd": [None, 1.5]}
    assert jsontext.dump({"x": "é"}) == '{"x":"é"}'.encode()


def test_method_not_found_echoes_a_bounded_name():
    assert len(jsonrpc.method_not_found("m" * 100_000).message) < 100
