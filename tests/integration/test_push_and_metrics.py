"""A2A push notifications for every verdict, and /metrics that moves as the server works."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from x402.http.utils import encode_payment_signature_header

from bindu.devnet import Devnet, PayingClient
from bindu.server.embedded import bind, serving
from tests.support import agents
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
TOKEN = "client-token-7f3a"


async def paid_headers(client: PayingClient) -> dict[str, str]:
    payment = await client.sign(await client.payment_required())
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payment)}


def receiver(seen: list[tuple[dict, dict]]) -> Starlette:
    async def hook(request: Request) -> Response:
        seen.append((dict(request.headers), json.loads(await request.body())))
        return Response(status_code=200)

    return Starlette(routes=[Route("/push", hook, methods=["POST"])])


def statuses(seen: list[tuple[dict, dict]], task_id: str) -> list[tuple[str, str | None]]:
    return [
        (body["status"]["state"], body["metadata"].get("x402.payment.status"))
        for _, body in seen
        if body["id"] == task_id
    ]


async def test_push_reaches_the_client_for_each_verdict_despite_downtime(
    devnet: Devnet, faults_reset, tmp_path
):
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__SETTLE_TIMEOUT_SECONDS="2",
        X402__MAX_TIMEOUT_SECONDS="12",
        X402__RECONCILIATION__INTERVAL_SECONDS="1",
    )
    seen: list[tuple[dict, dict]] = []
    sock = bind()  # the receiver is down (nothing listens) until the verdicts are in
    push = {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/push", "token": TOKEN}
    async with (
        inprocess_server(settings_from_env(env), agents.counting) as url,
        PayingClient(url, payer) as client,
    ):
        faults_reset.update({"settle_delay_seconds": 4})
        params = {
            "message": {"role": "user", "parts": [{"kind": "text", "text": "orphan me"}]},
            "configuration": {"blocking": True, "pushNotificationConfig": push},
        }
        reply = await client.rpc("message/send", params, await paid_headers(client))
        orphan = reply.json()["result"]["id"]
        faults_reset.update({"settle_delay_seconds": 0, "settle_fail_before_broadcast": True})
        reply = await client.rpc("message/send", params, await paid_headers(client))
        void = reply.json()["result"]["id"]
        faults_reset.reset()
        got = (
            await client.signed_in_rpc("tasks/pushNotificationConfig/get", {"id": orphan})
        ).json()
        assert got["result"]["pushNotificationConfig"]["url"] == push["url"]

        async def verdicts_written() -> bool:
            states = []
            for task_id in (orphan, void):
                task = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]
                states.append(task["metadata"]["x402.payment.status"])
            return states == ["payment-orphaned", "payment-void"]

        await until(verdicts_written, timeout=45, what="both verdicts")
        assert seen == []
        async with serving(receiver(seen), sock, lifespan="off"):

            async def all_delivered() -> bool:
                return ("failed", "payment-orphaned") in statuses(seen, orphan) and (
                    "failed",
                    "payment-void",
                ) in statuses(seen, void)

            await until(all_delivered, timeout=40, what="push deliveries after downtime")
    assert statuses(seen, orphan) == [
        ("working", "payment-verified"),
        ("failed", "payment-failed"),
        ("failed", "payment-orphaned"),
    ]
    assert statuses(seen, void)[-1] == ("failed", "payment-void")
    assert all(headers.get("x-a2a-notification-token") == TOKEN for headers, _ in seen)
    assert all("signature" not in json.dumps(body) for _, body in seen)


METRICS_TOKEN = "metrics-token-for-tests"


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_parse_and_move(devnet: Devnet, faults_reset, tmp_path):
    payer = await devnet.new_payer(10 * AMOUNT)
    env = devnet.server_env(
        STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
        X402__SETTLE_TIMEOUT_SECONDS="2",
        X402__RECONCILIATION__INTERVAL_SECONDS="1",
        METRICS__TOKEN=METRICS_TOKEN,
        METRICS__REFRESH_SECONDS="0.2",
    )
    async with (
        inprocess_server(settings_from_env(env), agents.counting) as url,
        PayingClient(url, payer) as client,
        httpx.AsyncClient(headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as http,
    ):
        before = scrape((await http.get(url + "/metrics")).text)
        await client.send_text("paid")
        await client.send_text("unpaid", payment=None)
        faults_reset.update({"settle_delay_seconds": 4})
        lost = (await client.send_text("lost")).response.json()["result"]["id"]
        faults_reset.reset()

        async def orphaned() -> bool:
            task = (await client.signed_in_rpc("tasks/get", {"id": lost})).json()["result"]
            return task["metadata"]["x402.payment.status"] == "payment-orphaned"

        await until(orphaned, timeout=30, what="orphaned verdict")

        async def gauges_caught_up() -> dict | None:
            # The payment gauges are refreshed in the background, not per scrape.
            now = scrape((await http.get(url + "/metrics")).text)
            key = ("bindu_payments", (("status", "payment-orphaned"),))
            return now if now.get(key) == 1 else None

        after = await until(gauges_caught_up, timeout=10, what="payment gauges refreshed")

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("bindu_agent_runs_total", outcome="ok", paid="true") == 1
    assert delta("bindu_payment_transitions_total", status="payment-completed") == 1
    assert delta("bindu_payment_transitions_total", status="payment-failed") == 1
    assert delta("bindu_payment_transitions_total", status="payment-orphaned") == 1
    assert delta("bindu_reconcile_verdicts_total", verdict="orphaned") == 1
    assert delta("bindu_paywall_refusals_total", status="402") >= 1
    assert delta("bindu_reconcile_pass_seconds_count") >= 1
    assert after[("bindu_payments", (("status", "payment-orphaned"),))] == 1
    assert after[("bindu_payments", (("status", "payment-completed"),))] == 1
