"""Prometheus metrics (one process-wide set, served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS = Counter("bindu_tasks_total", "Tasks that reached a final state", ["state"])
AGENT_RUNS = Counter("bindu_agent_runs_total", "Times the agent was invoked", ["outcome", "paid"])
PAYMENTS = Counter(
    "bindu_payment_transitions_total", "Payment records that entered a status", ["status"]
)
PAYWALL_REFUSALS = Counter(
    "bindu_paywall_refusals_total", "Paid requests refused before any work", ["status"]
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
OPEN_PAYMENTS = Gauge("bindu_payments_open", "Payments whose outcome is not yet proven", ["status"])
OLDEST_OPEN_SECONDS = Gauge(
    "bindu_payments_open_oldest_seconds", "Age of the oldest payment not yet proven"
)
WEBHOOK_FAILURES = Counter(
    "bindu_webhook_failures_total", "Operator webhook deliveries that failed after retries"
)
