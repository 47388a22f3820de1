"""The outbox service: delivers push notifications and operator webhooks from storage.

Events were written by the state change they report (``bindu/payments/events.py``), so
nothing is lost when the process dies: after a restart, or on another replica, they are
delivered from the table. Each stream (one task's pushes, one task's alerts) goes out
strictly in order: storage hands out only a stream's oldest pending event, under a lease.
Deliveries run side by side, each bounded by a timeout, so one dead receiver never holds
up another destination; a failing destination backs off as a whole (its other streams are
deferred, not attempted, until it is due again).

Push notifications go only to public addresses (``push_targets``), connected to the
address that was checked, never following redirects; a 4xx answer is final. Each carries
the client's token and credentials as configured, and the server's signed JWT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import httpx
from loguru import logger
from pydantic import ValidationError

from bindu.a2a import PushNotificationConfig, utcnow
from bindu.aio import wait_event
from bindu.metrics import OUTBOX_DELIVERIES, PUSH_DELIVERIES, WEBHOOK_FAILURES
from bindu.payments.events import OutboxItem, OutboxStatus
from bindu.server.push_targets import UnsafeTarget, check_target, normalise_host
from bindu.settings import OutboxSettings, PushSettings
from bindu.signing import PushSigner
from bindu.storage.base import Storage

TOKEN_HEADER = "X-A2A-Notification-Token"
# The server's JWT, always here; also in Authorization when the client set no credentials.
JWT_HEADER = "X-A2A-Notification-JWT"
# Answers that say "later", not "never".
_RETRYABLE_4XX = frozenset({408, 425, 429})

Verdict = Literal["delivered", "retry", "drop", "defer"]


@dataclass(frozen=True)
class Attempt:
    verdict: Verdict
    destination: str
    reason: str | None = None
    defer_until: datetime | None = None


@dataclass
class _Backoff:
    failures: int = 0
    until: float = 0.0  # monotonic
    probing: bool = False  # one attempt in flight to a failing destination, no more


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:outbox:{uuid.uuid4().hex[:8]}"


def _answer_verdict(status: int) -> tuple[Verdict, str | None]:
    if 200 <= status < 300:
        return "delivered", None
    if 300 <= status < 400:
        return "drop", f"HTTP {status}: redirects are not followed"
    if 400 <= status < 500 and status not in _RETRYABLE_4XX:
        return "drop", f"HTTP {status}: refused by the receiver"
    return "retry", f"HTTP {status}"


class OutboxService:
    name = "outbox"

    def __init__(
        self,
        storage: Storage,
        settings: OutboxSettings,
        push: PushSettings,
        signer: PushSigner,
        *,
        webhook_url: str | None,
        owner: str | None = None,
    ) -> None:
        self._storage = storage
        self._settings = settings
        self._allowed = frozenset(normalise_host(h) for h in push.allowed_hosts)
        self._signer = signer
        self._webhook_url = webhook_url
        self.owner = owner or _owner()
        self._timeout = push.timeout_seconds
        # A lease outlives one attempt, so no other replica takes an event in flight.
        self._lease_seconds = push.timeout_seconds * 2 + 5
        self._http = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        self._backoff: dict[str, _Backoff] = {}
        self._inflight: dict[int, tuple[OutboxItem, asyncio.Task[None]]] = {}
        self._woken = asyncio.Event()

    # Running

    async def run(self) -> None:
        while True:
            await self.pump()
            await wait_event(self._woken, self._settings.poll_seconds)
            self._woken.clear()

    def wake(self) -> None:
        """Events were just written here: look now rather than at the next poll."""
        self._woken.set()

    async def pump(self) -> int:
        """Claim what is due (up to the free delivery slots) and start delivering it."""
        room = self._settings.concurrency - len(self._inflight)
        if room <= 0:
            return 0
        items = await self._storage.claim_outbox(
            now=utcnow(), limit=room, owner=self.owner, lease_seconds=self._lease_seconds
        )
        for item in items:
            task = asyncio.create_task(self._handle(item), name=f"outbox:{item.seq}")
            self._inflight[item.seq] = (item, task)
            task.add_done_callback(self._finished)
        return len(items)

    def _finished(self, task: asyncio.Task[None]) -> None:
        for seq, (_, running) in list(self._inflight.items()):
            if running is task:
                del self._inflight[seq]
        self._woken.set()  # a slot is free, and the stream's next event may be waiting

    async def deliver_due(self, timeout: float) -> None:
        """Deliver what is due now, for at most ``timeout`` seconds (CLI, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            claimed = await self.pump()
            if not claimed and not self._inflight:
                return
            pending = [task for _, task in self._inflight.values()]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        """Stop deliveries in flight and hand their events back (due now, for whoever
        runs next), then close the HTTP client."""
        inflight = list(self._inflight.values())
        for _, task in inflight:
            task.cancel()
        for item, task in inflight:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                await self._storage.retry_outbox(
                    item.seq,
                    owner=self.owner,
                    next_attempt_at=utcnow(),
                    error="interrupted by shutdown",
                    attempted=False,
                )
        await self._http.aclose()

    # One event

    async def _handle(self, item: OutboxItem) -> None:
        try:
            attempt = await self._attempt(item)
        except Exception as exc:  # storage trouble, say: the lease lapses, it comes back
            logger.exception("outbox: event {} failed unexpectedly", item.seq)
            attempt = Attempt("retry", "?", f"{type(exc).__name__}: {exc}")
        try:
            await self._record(item, attempt)
        except Exception:
            logger.exception("outbox: could not record the outcome of event {}", item.seq)

    async def _attempt(self, item: OutboxItem) -> Attempt:
        if item.kind == "push":
            return await self._push(item)
        return await self._webhook(item)

    def _gate(self, destination: str) -> Attempt | None:
        """A deferral when ``destination`` is backing off or already being probed."""
        state = self._backoff.get(destination)
        if state is None or state.failures == 0:
            return None
        wait = state.until - time.monotonic()
        if wait > 0 or state.probing:
            later = utcnow() + timedelta(seconds=max(wait, self._settings.poll_seconds))
            return Attempt("defer", destination, "destination backing off", later)
        state.probing = True
        return None

    async def _post(
        self,
        destination: str,
        url: httpx.URL,
        body: bytes,
        headers: dict[str, str],
        extensions: dict[str, str] | None = None,
    ) -> Attempt:
        gate = self._gate(destination)
        if gate is not None:
            return gate
        try:
            reply = await self._http.post(
                url, content=body, headers=headers, extensions=extensions or {}
            )
        except httpx.HTTPError as exc:
            return Attempt("retry", destination, f"{type(exc).__name__}: {exc}".rstrip(": "))
        verdict, reason = _answer_verdict(reply.status_code)
        return Attempt(verdict, destination, reason)

    async def _push(self, item: OutboxItem) -> Attempt:
        task_id = item.task_id or ""
        raw = await self._storage.get_push_config(task_id)
        if raw is None:
            return Attempt("drop", "-", "the task has no push config any more")
        try:
            config = PushNotificationConfig.model_validate(raw)
        except ValidationError:
            return Attempt("drop", "-", "the stored push config is unreadable")
        url = str(config.url)
        try:
            target = await check_target(url, self._allowed)
        except UnsafeTarget as exc:
            verdict: Verdict = "retry" if exc.retryable else "drop"
            return Attempt(verdict, normalise_host(httpx.URL(url).host), exc.reason)
        body = json.dumps(item.body, separators=(",", ":")).encode()
        token = self._signer.sign(body, audience=url, jti=item.key, task_id=item.task_id)
        headers = {"Content-Type": "application/json", "Host": target.host_header}
        headers[JWT_HEADER] = token
        headers["Authorization"] = f"Bearer {token}"
        if config.token:
            headers[TOKEN_HEADER] = config.token
        auth = config.authentication
        if auth is not None and auth.credentials:
            # The client's own credentials take the header, in the scheme it named.
            scheme = auth.schemes[0] if auth.schemes else "Bearer"
            if scheme.lower() == "bearer":
                scheme = "Bearer"
            headers["Authorization"] = f"{scheme} {auth.credentials}"
        destination = f"{target.url.scheme}://{target.host_header}"
        extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else None
        return await self._post(destination, target.pinned(), body, headers, extensions)

    async def _webhook(self, item: OutboxItem) -> Attempt:
        if not self._webhook_url:
            return Attempt("drop", "-", "no webhook configured (X402__RECONCILIATION__WEBHOOK_URL)")
        # The operator's own endpoint: trusted, so no address check.
        body = json.dumps(item.body, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        return await self._post(self._webhook_url, httpx.URL(self._webhook_url), body, headers)

    # Outcomes

    async def _record(self, item: OutboxItem, attempt: Attempt) -> None:
        now = utcnow()
        state = self._backoff.setdefault(attempt.destination, _Backoff())
        if attempt.verdict != "defer":
            state.probing = False
        if attempt.verdict == "defer":
            await self._storage.retry_outbox(
                item.seq,
                owner=self.owner,
                next_attempt_at=attempt.defer_until or now,
                error=attempt.reason,
                attempted=False,
            )
            return
        if attempt.verdict == "delivered":
            self._backoff.pop(attempt.destination, None)
            await self._finish(item, OutboxStatus.DELIVERED, None, now)
            return
        if attempt.verdict == "drop":
            logger.warning("outbox: {} {} dropped: {}", item.kind, item.key, attempt.reason)
            await self._finish(item, OutboxStatus.DROPPED, attempt.reason, now)
            return
        if item.attempts + 1 >= self._settings.max_attempts:
            logger.error(
                "outbox: {} {} given up after {} attempts: {}",
                item.kind,
                item.key,
                item.attempts + 1,
                attempt.reason,
            )
            reason = f"gave up after {item.attempts + 1} attempts: {attempt.reason}"
            await self._finish(item, OutboxStatus.DROPPED, reason, now)
            return
        state.failures += 1
        delay = min(
            self._settings.first_retry_seconds * 2 ** (state.failures - 1),
            self._settings.max_retry_seconds,
        )
        state.until = time.monotonic() + delay
        logger.debug(
            "outbox: {} {} attempt {} failed ({}); next in {:.1f}s",
            item.kind,
            item.key,
            item.attempts + 1,
            attempt.reason,
            delay,
        )
        await self._storage.retry_outbox(
            item.seq,
            owner=self.owner,
            next_attempt_at=now + timedelta(seconds=delay),
            error=attempt.reason,
        )

    async def _finish(
        self, item: OutboxItem, status: OutboxStatus, reason: str | None, now: datetime
    ) -> None:
        written = await self._storage.finish_outbox(
            item.seq, owner=self.owner, now=now, status=status, error=reason
        )
        if not written:
            return  # our lease lapsed and another replica took over: its outcome counts
        OUTBOX_DELIVERIES.labels(item.kind, status.value).inc()
        if item.kind == "push":
            PUSH_DELIVERIES.labels(
                "delivered" if status is OutboxStatus.DELIVERED else "abandoned"
            ).inc()
        elif status is OutboxStatus.DROPPED:
            WEBHOOK_FAILURES.inc()
