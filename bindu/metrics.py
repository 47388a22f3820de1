"""Prometheus metrics (one process-wide set, served at ``GET /metrics``: see
``bindu.server.observability`` for who may read them)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from bindu.payments.records import PaymentStatus, StatusStats

TASKS = Counter("bindu_tasks_total", "Tasks that reached a final state", ["state"])
AGENT_RUNS = Counter("bindu_agent_runs_total", "Times the agent was invoked", ["outcome", "paid"])
PAYMENTS = Counter(
    "bindu_payment_transitions_total", "Payment records that entered a status", ["status"]
)
PAYWALL_REFUSALS = Counter(
    "bindu_paywall_refusals_total", "Paid requests refused before any work", ["status"]
)
PAYWALL_RATE_LIMITED = Counter(
    "bindu_paywall_rate_limited_total",
    "Payments answered 429 because a refusal budget was spent",
    ["scope"],
)
ILLEGAL_TRANSITIONS = Counter(
    "bindu_illegal_transitions_total",
    "Payment writes refused by the lifecycle table (a bug, or a stale writer)",
    ["from", "to"],
)
CLAIMS_SWEPT = Counter(
    "bindu_claims_swept_total",
    "Nonce claims deleted because their /verify never answered (the process died)",
)
SERVICE_RESTARTS = Counter(
    "bindu_service_restarts_total", "Background services restarted after a crash", ["service"]
)
VERDICTS = Counter(
    "bindu_reconcile_verdicts_total", "Verdicts written by the reconciler", ["verdict"]
)
RECONCILE_ERRORS = Counter(
    "bindu_reconcile_errors_total", "Errors met by the reconciler", ["source"]
)
PROBE_SECONDS = Histogram(
    "bindu_reconcile_probe_seconds", "Latency of reconciliation probes", ["source"]
)
PASS_SECONDS = Histogram("bindu_reconcile_pass_seconds", "Duration of one reconciliation pass")
PAYMENT_RECORDS = Gauge(
    "bindu_payments",
    "Payment records by status (refreshed every METRICS__REFRESH_SECONDS)",
    ["status"],
)
OLDEST_PAYMENT_SECONDS = Gauge(
    "bindu_payments_oldest_age_seconds",
    "Age of the oldest payment record in each status (at the last refresh)",
    ["status"],
)
PAYMENT_GAUGE_REFRESHES = Counter(
    "bindu_payment_gauge_refreshes_total", "Times the payment gauges were read from storage"
)
WEBHOOK_FAILURES = Counter(
    "bindu_webhook_failures_total", "Operator webhook deliveries that failed after retries"
)
PUSH_DELIVERIES = Counter(
    "bindu_push_notifications_total", "Push notifications by final outcome", ["outcome"]
)
OUTBOX_DELIVERIES = Counter(
    "bindu_outbox_events_total",
    "Outbox events by kind (push, webhook) and final status (delivered, dropped)",
    ["kind", "status"],
)


def record_payment_stats(stats: dict[PaymentStatus, StatusStats], now: datetime) -> None:
    """Set the per-status gauges from storage's numbers (by the payment-gauges service)."""
    for status, numbers in stats.items():
        PAYMENT_RECORDS.labels(status.value).set(numbers.count)
        oldest = numbers.oldest_created_at
        OLDEST_PAYMENT_SECONDS.labels(status.value).set(
            (now - oldest).total_seconds() if oldest else 0.0
        )


# The durable task queue (issue 9).
QUEUE_REFUSALS = Counter(
    "bindu_queue_refusals_total", "message/send refused with 503: queue full or shutting down"
)
