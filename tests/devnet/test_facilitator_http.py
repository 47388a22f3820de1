"""The devnet facilitator's HTTP surface: wire format, bad input, the fault switch, counters."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from x402.http.facilitator_client import FacilitatorResponseError

from tests.devnet.support import requirements, sign
from tests.support.waiting import until

pytestmark = pytest.mark.devnet


@pytest.fixture
async def http(devnet):
    async with httpx.AsyncClient(base_url=devnet.info.facilitator_url, timeout=30) as client:
        yield client


def body(payment, offer) -> dict:
    return {
        "x402Version": 2,
        "paymentPayload": payment.model_dump(by_alias=True, exclude_none=True),
        "paymentRequirements": offer.model_dump(by_alias=True, exclude_none=True),
    }


async def test_supported_lists_the_devnet_network_and_signer(devnet, facilitator):
    supported = await asyncio.to_thread(facilitator.get_supported)  # the SDK call is sync
    kinds = {(k.x402_version, k.scheme, k.network) for k in supported.kinds}
    assert (2, "exact", devnet.info.network) in kinds
    assert devnet.info.facilitator_address in supported.signers["eip155:*"]


async def test_wire_format_matches_the_sdk_models(devnet, http, payer, pay_to):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    verified = await http.post("/verify", json=body(payment, offer))
    assert verified.status_code == 200
    assert verified.json() == {"isValid": True, "payer": payer.address}
    settled = await http.post("/settle", json=body(payment, offer))
    assert settled.status_code == 200
    answer = settled.json()
    assert answer["success"] is True and answer["network"] == devnet.info.network
    assert set(answer) <= {"success", "transaction", "network", "payer", "amount"}


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'{"x402Version": 2}',
        b'{"x402Version": 2, "paymentPayload": {}, "paymentRequirements": {}}',
        b'{"x402Version": 3, "paymentPayload": {}, "paymentRequirements": {}}',
    ],
)
@pytest.mark.parametrize("endpoint", ["/verify", "/settle"])
async def test_bad_bodies_get_400_json(http, endpoint, payload):
    response = await http.post(endpoint, content=payload)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


async def test_bad_scheme_payload_or_network_get_400(devnet, http, payer, pay_to):
    offer = requirements(devnet, pay_to)
    good = body(await sign(payer, offer), offer)

    def with_payload(inner) -> dict:
        return {**good, "paymentPayload": {**good["paymentPayload"], "payload": inner}}

    # An empty authorization is the SDK's to judge: a verdict, not an error.
    judged = await http.post("/verify", json=with_payload({"authorization": {}}))
    assert judged.status_code == 200 and judged.json()["isValid"] is False
    # A value the SDK cannot even parse, or a payload that is not an object: 400.
    unparsable = with_payload({"authorization": {"to": pay_to, "value": "ten"}})
    response = await http.post("/verify", json=unparsable)
    assert response.status_code == 400 and "malformed" in response.json()["error"]
    response = await http.post("/settle", json=with_payload("xyz"))
    assert response.status_code == 400 and "paymentPayload.payload" in response.json()["error"]

    def offering(**changes) -> dict:
        accepted = {**offer.model_dump(by_alias=True), **changes}
        return {
            **good,
            "paymentPayload": {**good["paymentPayload"], "accepted": accepted},
            "paymentRequirements": accepted,
        }

    # No facilitator for the scheme: 400.
    response = await http.post("/settle", json=offering(scheme="nope"))
    assert response.status_code == 400 and "nope" in response.json()["error"]
    # SDK surprise: registering one eip155 network registers the pattern eip155:*, so another
    # chain's payment reaches this chain's signer; only the EIP-712 chain id stops it.
    response = await http.post("/settle", json=offering(network="eip155:1"))
    assert response.status_code == 200
    assert response.json()["errorReason"] == "invalid_exact_evm_payload_signature"


async def test_faults_over_http(http):
    try:
        assert (await http.post("/_faults", json={"unavailable": True})).json()["unavailable"]
        for method, path in [("GET", "/supported"), ("POST", "/verify"), ("POST", "/settle")]:
            response = await http.request(method, path, json={})
            assert response.status_code == 503 and "error" in response.json()
        assert (await http.get("/_faults")).json()["unavailable"] is True
        assert (await http.get("/_stats")).status_code == 200  # control stays up

        # All or none: a bad field leaves every fault as it was.
        rejected = await http.post("/_faults", json={"malformed_json": True, "nope": 1})
        assert rejected.status_code == 400 and "nope" in rejected.json()["error"]
        assert (await http.get("/_faults")).json()["malformed_json"] is False
        for bad in ({"settle_delay_seconds": -1}, {"verify_error_status": 42}, {"unavailable": 1}):
            assert (await http.post("/_faults", json=bad)).status_code == 400
        assert (await http.post("/_faults", content=b"{")).status_code == 400
        assert (await http.post("/_faults", json=[1])).status_code == 400
    finally:
        reset = await http.post("/_faults/reset")
    assert reset.json() == {
        "settle_delay_seconds": 0.0,
        "verify_delay_seconds": 0.0,
        "settle_fail_before_broadcast": False,
        "pending_as_http_500": False,
        "verify_error_status": None,
        "malformed_json": False,
        "unavailable": False,
    }


async def test_verify_error_status(devnet, facilitator, faults_reset, payer, pay_to):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    faults_reset.verify_error_status = 502
    with pytest.raises(ValueError, match=r"Facilitator verify failed \(502\)"):
        await facilitator.verify(payment, offer)


async def test_malformed_json_still_settles_on_chain(
    devnet, facilitator, faults_reset, payer, pay_to
):
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    faults_reset.malformed_json = True
    with pytest.raises(FacilitatorResponseError, match="invalid JSON"):
        await facilitator.verify(payment, offer)
    # The garbled answer hides a real settlement: the caller cannot tell what happened.
    with pytest.raises(FacilitatorResponseError, match="invalid JSON"):
        await facilitator.settle(payment, offer)
    await until(lambda: devnet.transfer_logs(payer.address, pay_to), timeout=10, what="transfer")


async def test_stats_count_requests_and_settle_hashes(devnet, http, facilitator, payer, pay_to):
    before = (await http.get("/_stats")).json()
    offer = requirements(devnet, pay_to)
    payment = await sign(payer, offer)
    await facilitator.verify(payment, offer)
    settled = await facilitator.settle(payment, offer)
    await http.get("/supported")

    after = (await http.get("/_stats")).json()
    assert after["verify"] == before["verify"] + 1
    assert after["settle"] == before["settle"] + 1
    assert after["supported"] == before["supported"] + 1
    assert after["settle_transactions"][-1] == settled.transaction
    assert after == devnet.stats.to_dict()
