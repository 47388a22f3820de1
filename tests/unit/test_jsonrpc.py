import pytest

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
