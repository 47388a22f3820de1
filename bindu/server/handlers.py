"""A2A JSON-RPC methods: message/send, tasks/get, tasks/list, tasks/cancel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from bindu.a2a import (
    MAX_ID_LENGTH,
    MessageSendParams,
    PushNotificationConfig,
    Task,
    TaskIdParams,
    TaskListParams,
    TaskPushNotificationConfig,
    TaskQueryParams,
    TaskState,
    TaskStatus,
    new_id,
    utcnow,
)
from bindu.failpoints import failpoint
from bindu.payments.events import task_notice
from bindu.payments.paywall import Admission
from bindu.payments.records import META_STATUS, PaymentStatus, PaymentUpdate
from bindu.payments.task_meta import with_payment_meta
from bindu.server.auth.principal import Caller, may_access, owner_of_new_task
from bindu.server.jsonrpc import (
    INVALID_PARAMS,
    TASK_NOT_CANCELABLE,
    TASK_NOT_FOUND,
    UNSUPPORTED_OPERATION,
    RpcError,
)
from bindu.server.push_targets import UnsafeTarget, check_target, normalise_host
from bindu.server.task_manager import Busy, TaskManager

M = TypeVar("M", bound=BaseModel)

_CANCEL_REASON = "task canceled before settlement; never sent to /settle"

Handler = Callable[[dict[str, Any], Caller], Awaitable[Any]]


class SignInRequired(Exception):
    """An anonymous caller asked for what only a principal could see. The endpoint asks
    them to sign in when the server offers a way; otherwise it answers ``fallback`` (the
    error or result an unknown task or an empty listing gets: no oracle either way)."""

    def __init__(self, fallback: RpcError | dict[str, Any]) -> None:
        super().__init__("sign-in required")
        self.fallback = fallback


def parse_params(model: type[M], params: dict[str, Any]) -> M:
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise RpcError(INVALID_PARAMS, f"Invalid params: {where}: {first['msg']}") from None


def redacted(config: dict[str, Any]) -> dict[str, Any]:
    """A push config as it may be read back: without the token or the credentials."""
    shown = {k: v for k, v in config.items() if k != "token"}
    auth = shown.get("authentication")
    if isinstance(auth, dict):
        shown["authentication"] = {k: v for k, v in auth.items() if k != "credentials"}
    return shown


def render(
    task: Task, history_length: int | None = None, *, artifacts: bool = True
) -> dict[str, Any]:
    if history_length is not None:
        keep = task.history[-history_length:] if history_length else []
        task = task.model_copy(update={"history": keep})
    if not artifacts:
        task = task.model_copy(update={"artifacts": []})
    return task.wire()


def not_found(task_id: str) -> RpcError:
    # One answer for unknown tasks and other owners' tasks alike.
    return RpcError(TASK_NOT_FOUND, f"Task not found: {task_id}")


class Handlers:
    def __init__(self, manager: TaskManager) -> None:
        self._tm = manager
        self._storage = manager.storage
        self._allowed_hosts = frozenset(
            normalise_host(h) for h in manager.settings.push.allowed_hosts
        )

    def table(self) -> dict[str, Handler]:
        return {
            "message/send": self.message_send,
            "tasks/get": self.tasks_get,
            "tasks/list": self.tasks_list,
            "tasks/cancel": self.tasks_cancel,
            "tasks/pushNotificationConfig/set": self.push_config_set,
            "tasks/pushNotificationConfig/get": self.push_config_get,
        }

    def new_task(self, params: MessageSendParams, task_id: str) -> Task:
        message = params.message
        if message.role != "user":
            raise RpcError(INVALID_PARAMS, "Invalid params: message.role must be 'user'")
        # Bounded here, not on Message: stored messages (agent-made too) must still load.
        for name, value in (("messageId", message.message_id), ("contextId", message.context_id)):
            if value is not None and not 0 < len(value) <= MAX_ID_LENGTH:
                raise RpcError(
                    INVALID_PARAMS,
                    f"Invalid params: message.{name}: 1 to {MAX_ID_LENGTH} characters",
                )
        if message.task_id is not None:
            raise RpcError(
                UNSUPPORTED_OPERATION, "continuing an existing task is not supported; omit taskId"
            )
        task = Task(id=task_id, status=TaskStatus(state=TaskState.SUBMITTED))
        if message.context_id:
            task.context_id = message.context_id
        stored = message.model_copy(update={"task_id": task.id, "context_id": task.context_id})
        task.history = [stored]
        return task

    async def _task_for(self, task_id: str, caller: Caller) -> Task:
        """The task if ``caller`` may use it; otherwise exactly what an unknown id gets."""
        task = await self._storage.get_task(task_id)
        if task is not None and may_access(task, caller):
            return task
        if caller is None:
            raise SignInRequired(not_found(task_id))
        raise not_found(task_id)

    async def check_push(self, config: PushNotificationConfig | None, where: str) -> None:
        """Refuse a push URL that reaches inside (SSRF) before anything is stored or paid."""
        if config is None:
            return
        try:
            await check_target(str(config.url), self._allowed_hosts)
        except UnsafeTarget as exc:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {where}.url: {exc.reason}") from None

    async def message_send(
        self,
        raw: dict[str, Any],
        caller: Caller,
        *,
        task_id: str | None = None,
        admission: Admission | None = None,
        now: datetime | None = None,
    ) -> Any:
        params = parse_params(MessageSendParams, raw)
        task = self.new_task(params, task_id or new_id())
        task.owner = owner_of_new_task(caller, admission.record.payer if admission else None)
        push = params.configuration.push_notification_config
        if admission is None:  # a paid call's config was checked before the payment
            await self.check_push(push, "configuration.pushNotificationConfig")
            await self._storage.create_task(task)
        else:
            now = now or utcnow()
            task.metadata[META_STATUS] = PaymentStatus.VERIFIED.value
            recorded = await self._storage.transition_payment(
                admission.record.id,
                {PaymentStatus.CLAIMED},
                # Queued: the task queue's until a worker settles it (no reconciler check).
                PaymentUpdate(status=PaymentStatus.VERIFIED),
                now=now,
                task=task,
            )
            if recorded is None:
                # Verify outlived its deadline and the sweep freed the claim: no settle was
                # sent, so nothing moved; the payer may send the same payment again.
                raise Busy("payment verification took too long; nothing was charged", 1)
        if push is not None:
            await self._storage.set_push_config(task.id, push.wire())
        await failpoint("after-queue")  # tests: killed with the task queued, not yet started
        await self._tm.submit(task.id)
        if params.configuration.blocking:
            await self._tm.wait(task.id, self._tm.settings.server.blocking_timeout_seconds)
        stored = await self._storage.get_task(task.id)
        return render(stored or task, params.configuration.history_length)

    async def tasks_get(self, raw: dict[str, Any], caller: Caller) -> Any:
        params = parse_params(TaskQueryParams, raw)
        task = await self._task_for(params.id, caller)
        return render(task, params.history_length)

    async def tasks_list(self, raw: dict[str, Any], caller: Caller) -> Any:
        params = parse_params(TaskListParams, raw)
        if caller is None:
            # Anonymous callers own nothing, and ownerless tasks are never listed.
            raise SignInRequired({"tasks": [], "nextPageToken": None})
        offset = 0
        if params.page_token is not None:  # digits only, at most 18 (checked by the model)
            offset = int(params.page_token)
        tasks = await self._storage.list_tasks(
            owner=caller.id,
            context_id=params.context_id,
            state=params.state,
            limit=params.page_size + 1,
            offset=offset,
        )
        more = len(tasks) > params.page_size
        page = tasks[: params.page_size]
        return {
            "tasks": [render(t, 0, artifacts=params.include_artifacts) for t in page],
            "nextPageToken": str(offset + len(page)) if more else None,
        }

    async def tasks_cancel(self, raw: dict[str, Any], caller: Caller) -> Any:
        params = parse_params(TaskIdParams, raw)
        task = await self._task_for(params.id, caller)
        canceled = task.with_status(TaskState.CANCELED, "canceled by the client")
        payment = await self._storage.get_payment_for_task(task.id)
        if task.state is not TaskState.SUBMITTED:
            raise RpcError(TASK_NOT_CANCELABLE, f"Task cannot be canceled in state {task.state}")
        if payment is None:
            # Compare-and-set against the queue: a worker that started the task first wins.
            won = await self._storage.transition_task(
                canceled, expected={TaskState.SUBMITTED}, events=[task_notice(canceled)]
            )
        else:
            # One write for the task and its payment, so no crash leaves a queued payment
            # beside a canceled task. The payment's compare-and-set is the race with the
            # worker (which moves it to settling before /settle): whoever writes first wins.
            # Never sent to /settle; whether the authorization is spent elsewhere is for
            # the reconciler to prove (void once it expires unused).
            canceled = with_payment_meta(canceled, PaymentStatus.FAILED, error=_CANCEL_REASON)
            now = utcnow()
            won = None is not await self._storage.transition_payment(
                payment.id,
                {PaymentStatus.VERIFIED},
                PaymentUpdate(
                    status=PaymentStatus.FAILED,
                    error=_CANCEL_REASON,
                    next_check_at=now,
                    # Marks the work as unwanted: even the fulfill policy must not settle it.
                    answer={"source": "cancel", "at": now.isoformat()},
                ),
                now=now,
                task=canceled,
                events=[task_notice(canceled)],
            )
        if not won:
            raise RpcError(
                TASK_NOT_CANCELABLE, f"Task cannot be canceled in state {TaskState.WORKING}"
            )
        self._tm.notify(canceled)
        return render(canceled)

    async def push_config_set(self, raw: dict[str, Any], caller: Caller) -> Any:
        params = parse_params(TaskPushNotificationConfig, raw)
        await self._task_for(params.task_id, caller)
        config = params.push_notification_config
        await self.check_push(config, "pushNotificationConfig")
        await self._storage.set_push_config(params.task_id, config.wire())
        return {"taskId": params.task_id, "pushNotificationConfig": redacted(config.wire())}

    async def push_config_get(self, raw: dict[str, Any], caller: Caller) -> Any:
        params = parse_params(TaskIdParams, raw)
        await self._task_for(params.id, caller)
        config = await self._storage.get_push_config(params.id)
        if config is None:
            raise RpcError(TASK_NOT_FOUND, f"No push notification config for task {params.id}")
        return {"taskId": params.id, "pushNotificationConfig": redacted(config)}
