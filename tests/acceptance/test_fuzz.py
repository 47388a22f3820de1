"""Fuzz: 10,000+ generated requests against the real `bindu serve` with payments on.

Valid JSON-RPC shapes for every method with hostile values (deep nesting, lone surrogates,
huge numbers, odd types, long strings), bogus payment headers, raw garbage bodies and a few
garbage bytes straight on the socket. The server never dies, never answers 5xx or -32603,
and a real paid request works afterwards. Generation is derandomized (same requests on every
run, so CI is reproducible); the requests are generated first, then sent over a few
keep-alive connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bindu.devnet import Devnet, PayingClient
from tests.support.hostile import VALID_PARAMS
from tests.support.rawhttp import RawHttp
from tests.support.servers import ServerProcess

pytestmark = pytest.mark.devnet

# Each generated example is a batch, which keeps hypothesis' per-example cost small.
BATCH = 50
# BINDU_FUZZ_EXAMPLES shortens (or lengthens) a run by hand; CI runs the default.
EXAMPLES = int(os.environ.get("BINDU_FUZZ_EXAMPLES", "205"))
MIN_REQUESTS = 10_000 if "BINDU_FUZZ_EXAMPLES" not in os.environ else 1
CONNECTIONS = 4
BODY_LIMIT = 262_144
METHODS = list(VALID_PARAMS)


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is (numbers Python cannot print, nesting, bad literals)."""

    text: str


def to_json(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    # ensure_ascii writes a lone surrogate as the escape \udXXX; floats may be NaN/Infinity.
    return json.dumps(value)


# ---------------------------------------------------------------- hostile values

awkward_chars = st.sampled_from(
    ["a", "é", "\ud800", "\udfff", "\U0001f600", "\x00", '"', "\\", "[", "{", "²", "\u202e"]
)
hostile_text = st.one_of(
    st.text(max_size=40),
    st.text(awkward_chars, max_size=20),
    st.sampled_from(["\ud800", "a\udc00b", "\ud83d", "", " ", "9" * 30, "²", "-1", "0x7f000001"]),
    st.sampled_from([257, 1_000, 10_000]).map(lambda n: "x" * n),
)
huge_numbers = st.sampled_from(
    [
        Raw("9" * 5000),
        Raw("-" + "9" * 400),
        Raw("1" * 30),
        Raw("1e999"),
        Raw("-1e999"),
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-0"),
        Raw("1.0e-400"),
        Raw("9223372036854775808"),
        Raw("0." + "0" * 5000 + "1"),
    ]
)
deep_nesting = st.one_of(
    st.sampled_from([33, 100, 1_000, 5_000]).map(lambda n: Raw("[" * n + "]" * n)),
    st.sampled_from([33, 300, 2_000]).map(lambda n: Raw('{"a":' * n + "1" + "}" * n)),
    st.sampled_from([33, 5_000, 30_000]).map(lambda n: Raw("[" * n)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
    huge_numbers,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
    ),
    max_leaves=12,
)
hostile = st.one_of(scalars, deep_nesting, json_values)
garbage_bodies = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'"\\ud800"', b"\xed\xa0\x80"]),
)
header_chars = st.characters(min_codepoint=32, max_codepoint=126)


def leaf_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in ``value`` (containers too), so whole subtrees can be replaced."""
    paths = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            paths += leaf_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths += leaf_paths(item, (*path, index))
    return paths


def replaced(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    if isinstance(doc, dict):
        return {k: (replaced(v, tuple(rest), new) if k == head else v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [(replaced(v, tuple(rest), new) if i == head else v) for i, v in enumerate(doc)]
    return doc  # an earlier replacement removed this position


def rpc_request(rng: random.Random, pool: list[Any], names: list[str]) -> dict[str, Any]:
    """A valid request of a random method with 1-3 positions replaced by pool values."""
    method = rng.choice(METHODS)
    doc: Any = {"jsonrpc": "2.0", "id": 1, "method": method, "params": VALID_PARAMS[method]}
    positions = leaf_paths(doc)[1:]  # not the root: the request stays an object
    for path in rng.sample(positions, rng.randint(1, 3)):
        doc = replaced(doc, path, rng.choice(pool))
    if rng.random() < 0.3 and isinstance(doc.get("params"), dict):
        doc["params"] = {**doc["params"], rng.choice(names): rng.choice(pool)}
    return dict(doc)


@dataclass
class Sent:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def payment_headers(
    rng: random.Random, pool: list[Any], garbage: list[str], template: dict[str, Any]
) -> dict[str, str]:
    name = rng.choice(["PAYMENT-SIGNATURE", "X-PAYMENT"])
    kind = rng.choice(["garbage", "json", "mutated", "mutated"])
    if kind == "garbage":
        value = rng.choice(garbage)
    elif kind == "json":
        value = b64(to_json(rng.choice(pool)).encode("utf-8", "surrogatepass"))
    else:
        mutated: Any = template
        for path in rng.sample(leaf_paths(template), rng.randint(1, 2)):
            mutated = replaced(mutated, path, rng.choice(pool))
        value = b64(to_json(mutated).encode("utf-8", "surrogatepass"))
    return {name: value}


def batches(template: dict[str, Any]) -> list[Sent]:
    """Generate every request up front, derandomized: the same list on every run.

    Each example draws a small pool of hostile values and garbage, and a seed; the batch's
    requests combine them (cheaper than drawing each request field by field, and just as
    reproducible).
    """
    out: list[Sent] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        pool=st.lists(hostile, min_size=3, max_size=8),
        names=st.lists(hostile_text, min_size=1, max_size=3),
        bodies=st.lists(garbage_bodies, min_size=1, max_size=3),
        headers=st.lists(st.text(header_chars, max_size=300), min_size=1, max_size=2),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def generate(
        pool: list[Any],
        names: list[str],
        bodies: list[bytes],
        headers: list[str],
        seed: int,
    ) -> None:
        rng = random.Random(seed)  # a hypothesis-drawn seed: reproducible, and cheap per call
        for _ in range(BATCH):
            kind = rng.choice(["rpc"] * 8 + ["paid", "garbage"])
            if kind == "garbage":
                out.append(Sent(rng.choice(bodies)))
            elif kind == "paid":  # a valid paid call: only its payment header is hostile
                text = rng.choice(names)
                doc = {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "message/send",
                    "params": {
                        "message": {"role": "user", "parts": [{"kind": "text", "text": text}]}
                    },
                }
                body = to_json(doc).encode("utf-8", "surrogatepass")
                out.append(Sent(body, payment_headers(rng, pool, headers, template)))
            else:
                doc = rpc_request(rng, pool, names)
                out.append(Sent(to_json(doc).encode("utf-8", "surrogatepass")))

    generate()
    return out


# ---------------------------------------------------------------- the run


@dataclass
class Tally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


async def send_all(port: int, requests: list[Sent], tally: Tally) -> int:
    """Send every request over CONNECTIONS keep-alive connections; returns connections made."""
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for item in requests:
        queue.put_nowait(item)
    clients = [RawHttp("127.0.0.1", port) for _ in range(CONNECTIONS)]

    async def worker(client: RawHttp) -> None:
        while not queue.empty():
            item = queue.get_nowait()
            reply = await client.post("/", item.body, item.headers)
            tally.sent += 1
            tally.statuses[reply.status] += 1
            code = None
            if reply.headers.get("content-type", "").startswith("application/json"):
                doc = json.loads(reply.body)
                if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                    code = doc["error"].get("code")
                    tally.codes[code] += 1
            if reply.status >= 500 or code == -32603:
                tally.failures.append(f"{reply.status} {reply.body[:200]!r} <- {item!r:.300}")

    try:
        await asyncio.gather(*(worker(client) for client in clients))
    finally:
        for client in clients:
            await client.close()
    return sum(client.connections for client in clients)


async def garbage_on_the_socket(port: int) -> int:
    """Bytes that are not HTTP at all, or broken HTTP: answered or dropped, never fatal."""
    payloads = [
        b"\x00\xff\x16\x03\x01garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
        b"\r\n" * 1000,
    ]
    for payload in payloads:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            writer.write_eof()  # so the server need not wait out its keep-alive timeout
            await writer.drain()
            await asyncio.wait_for(reader.read(), 15)  # the server answers or closes
        except (ConnectionResetError, BrokenPipeError):
            # Closing on unread bytes (a 70 KB header line, say) makes the kernel answer
            # with a reset: a drop, which is allowed; the liveness checks follow.
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    return len(payloads)


async def test_fuzz_the_real_server(devnet: Devnet, tmp_path):
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        SERVER__MAX_BODY_BYTES=str(BODY_LIMIT),
        # Refused payments are throttled per client; the fuzz client is one address and
        # wants its bogus headers judged, not turned away.
        X402__RATE_LIMIT__CLIENT_BURST="1000000",
        X402__RATE_LIMIT__PAYER_BURST="1000000",
    )
    server = await ServerProcess("bindu.examples.echo:agent", env, tmp_path / "s.log").start()
    try:
        payer = await devnet.new_payer(10_000)
        async with PayingClient(server.url, payer) as client:
            signed = await client.sign(await client.payment_required())
        template = signed.model_dump(mode="json", by_alias=True, exclude_none=True)

        started = time.monotonic()
        requests = batches(template)
        generated = time.monotonic()
        assert len(requests) >= MIN_REQUESTS
        tally = Tally()
        connections = await send_all(server.port, requests, tally)
        sent = time.monotonic()
        raw = await garbage_on_the_socket(server.port)
        finished = time.monotonic()

        assert server.proc is not None and server.proc.poll() is None, server.log()[-3000:]
        assert tally.failures == [], tally.failures[:5]
        assert "Traceback" not in server.log(), server.log()[-3000:]
        assert tally.sent == len(requests)
        assert sum(n for s, n in tally.statuses.items() if s >= 500) == 0
        assert -32603 not in tally.codes
        # The run reached the server's refusals, not only its HTTP layer.
        assert {-32700, -32600, -32602} <= set(tally.codes)

        # A normal, paid request still works.
        async with PayingClient(server.url, await devnet.new_payer(10_000)) as client:
            reply = await client.send_text("after the storm")
        task = reply.response.json()["result"]
        assert task["status"]["state"] == "completed"
        assert task["artifacts"][0]["parts"][0]["text"] == "echo: after the storm"
        print(
            f"\nfuzz: {tally.sent} requests over {connections} connections"
            f" + {raw} raw socket payloads, "
            f"HTTP statuses {dict(sorted(tally.statuses.items()))}, "
            f"JSON-RPC codes {dict(sorted(tally.codes.items()))}, crashes 0, "
            f"generation {generated - started:.1f} s, sending {sent - generated:.1f} s, "
            f"raw socket {finished - sent:.1f} s"
        )
    finally:
        server.stop()
