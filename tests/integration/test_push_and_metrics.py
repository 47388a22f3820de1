"""A2A push notifications for every verdict (signed, through the outbox), the operator
webhook once per orphan whoever finds it, and /metrics that moves as the server works."""

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
from tests.support.receivers import Call, Receiver, receiving, verified_claims
from tests.support.servers import inprocess_server
from tests.support.settings import settings_from_env
from tests.support.waiting import until

pytestmark = pytest.mark.devnet

AMOUNT = 10_000
TOKEN = "client-token-7f3a"
# The push receivers live on loopback, which only an operator's allowlist opens.
OUTBOX_ENV = {
    "PUSH__ALLOWED_HOSTS": "127.0.0.1",
    "OUTBOX__FIRST_RETRY_SECONDS": "0.2",
    "OUTBOX__MAX_RETRY_SECONDS": "1",
    "OUTBOX__POLL_SECONDS": "0.2",
}


async def paid_headers(client: PayingClient) -> dict[str, str]:
    payment = await client.sign(await client.payment_required())
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payment)}


def receiver(seen: list[tuple[dict, dict]], raw: list[bytes]) -> Starlette:
    async def hook(request: Request) -> Response:
        body = await request.body()
        raw.append(body)
        seen.append((dict(request.headers), json.loads(body)))
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
    operator = Receiver()
    seen: list[tuple[dict, dict]] = []
    raw: list[bytes] = []
    sock = bind()  # the receiver is down (nothing listens) until the verdicts are in
    push = {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/push", "token": TOKEN}
    async with (
        receiving(operator) as webhook,
        inprocess_server(
            settings_from_env(
                devnet.server_env(
                    STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
                    X402__SETTLE_TIMEOUT_SECONDS="2",
                    X402__MAX_TIMEOUT_SECONDS="12",
                    X402__RECONCILIATION__INTERVAL_SECONDS="1",
                    X402__RECONCILIATION__WEBHOOK_URL=webhook + "/ops",
                    **OUTBOX_ENV,
                )
            ),
            agents.counting,
        ) as url,
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
        assert got["result"]["pushNotificationConfig"] == {"url": push["url"]}  # no token

        async def verdicts_written() -> bool:
            states = []
            for task_id in (orphan, void):
                task = (await client.signed_in_rpc("tasks/get", {"id": task_id})).json()["result"]
                states.append(task["metadata"]["x402.payment.status"])
            return states == ["payment-orphaned", "payment-void"]

        await until(verdicts_written, timeout=45, what="both verdicts")
        assert seen == []
        async with serving(receiver(seen, raw), sock, lifespan="off"):

            async def all_delivered() -> bool:
                return ("failed", "payment-orphaned") in statuses(seen, orphan) and (
                    "failed",
                    "payment-void",
                ) in statuses(seen, void)

            await until(all_delivered, timeout=40, what="push deliveries after downtime")
        await until(lambda: _has(operator), timeout=20, what="the operator's webhook")
        signed = [
            await verified_claims(Call("/push", headers, data), url, push["url"])
            for (headers, _), data in zip(seen, raw, strict=True)
        ]
    assert {c["taskId"] for c in signed} == {orphan, void}
    assert len({c["jti"] for c in signed}) == len(signed)  # one per notification
    # The orphan reached the operator exactly once; the void was only logged.
    assert [(e["event"], e["taskId"]) for e in operator.bodies()] == [("payment.orphaned", orphan)]
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


async def test_agent_failure_after_settle_reaches_the_operator_once(
    devnet: Devnet, faults_reset, tmp_path
):
    payer = await devnet.new_payer(10 * AMOUNT)
    operator, client_hook = Receiver(), Receiver()
    async with (
        receiving(operator) as webhook,
        receiving(client_hook) as push_base,
        inprocess_server(
            settings_from_env(
                devnet.server_env(
                    STORAGE__URL=f"sqlite:///{tmp_path}/bindu.db",
                    X402__RECONCILIATION__INTERVAL_SECONDS="1",
                    X402__RECONCILIATION__WEBHOOK_URL=webhook + "/ops",
                    **OUTBOX_ENV,
                )
            ),
            agents.failing,
        ) as url,
        PayingClient(url, payer) as client,
    ):
        push = {"url": push_base + "/push", "token": TOKEN}
        params = {
            "message": {"role": "user", "parts": [{"kind": "text", "text": "break"}]},
            "configuration": {"blocking": True, "pushNotificationConfig": push},
        }
        reply = await client.rpc("message/send", params, await paid_headers(client))
        task = reply.json()["result"]
        assert task["metadata"]["x402.payment.status"] == "payment-orphaned"

        async def told() -> bool:
            done = ("failed", "payment-orphaned") in [
                (b["status"]["state"], b["metadata"].get("x402.payment.status"))
                for b in client_hook.bodies()
            ]
            return done and bool(operator.accepted)

        await until(told, timeout=30, what="the push and the webhook")
        [call] = [c for c in client_hook.accepted if c.body["status"]["state"] == "failed"]
        claims = await verified_claims(call, url, push["url"])
    assert claims["taskId"] == task["id"]
    [alert] = operator.bodies()
    assert (alert["event"], alert["taskId"]) == ("payment.orphaned", task["id"])
    assert alert["transaction"] and alert["reason"].startswith("work not delivered: agent failed")


async def _has(receiver: Receiver) -> bool:
    return bool(receiver.accepted)
