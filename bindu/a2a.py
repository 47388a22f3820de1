"""A2A wire types: tasks, messages, parts, artifacts (camelCase on the wire only)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl
from pydantic.alias_generators import to_camel

# Ids a caller sends (task, context, message, request ids) are at most this long: enough for
# any UUID or ULID scheme, small enough to echo in an error or index cheaply.
MAX_ID_LENGTH = 256
# Page tokens are offsets we issued: decimal digits that fit a signed 64-bit integer.
PAGE_TOKEN_PATTERN = r"^[0-9]{1,18}$"

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class TaskState(StrEnum):
    SUBMITTED = "submitted"
    WORKING = "working"
    INPUT_REQUIRED = "input-required"
    COMPLETED = "completed"
    CANCELED = "canceled"
    FAILED = "failed"
    REJECTED = "rejected"
    AUTH_REQUIRED = "auth-required"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in (
            TaskState.COMPLETED,
            TaskState.CANCELED,
            TaskState.FAILED,
            TaskState.REJECTED,
        )


class TextPart(WireModel):
    kind: Literal["text"] = "text"
    text: str
    metadata: dict[str, Any] | None = None


class DataPart(WireModel):
    kind: Literal["data"] = "data"
    data: dict[str, Any]
    metadata: dict[str, Any] | None = None


Part = Annotated[TextPart | DataPart, Field(discriminator="kind")]


class Message(WireModel):
    kind: Literal["message"] = "message"
    role: Literal["user", "agent"]
    parts: list[Part] = Field(min_length=1)
    message_id: str = Field(default_factory=new_id)
    task_id: str | None = None
    context_id: str | None = None
    metadata: dict[str, Any] | None = None


class Artifact(WireModel):
    artifact_id: str = Field(default_factory=new_id)
    name: str | None = None
    parts: list[Part]
    metadata: dict[str, Any] | None = None


class TaskStatus(WireModel):
    state: TaskState
    timestamp: datetime = Field(default_factory=utcnow)
    message: Message | None = None


class Task(WireModel):
    kind: Literal["task"] = "task"
    id: str = Field(default_factory=new_id)
    context_id: str = Field(default_factory=new_id)
    status: TaskStatus
    history: list[Message] = Field(default_factory=list)
    artifacts: list[Artifact] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Who may read and change the task (a principal id such as "key:alice" or
    # "wallet:0x…"; None: anyone holding the id). Never on the wire: exclude=True keeps it
    # out of every dump, so storage keeps it in its own column, written once at insert.
    owner: str | None = Field(default=None, exclude=True)

    @property
    def state(self) -> TaskState:
        return self.status.state

    def with_status(self, state: TaskState, text: str | None = None) -> Task:
        message = None
        if text is not None:
            message = Message(
                role="agent",
                parts=[TextPart(text=text)],
                task_id=self.id,
                context_id=self.context_id,
            )
        return self.model_copy(update={"status": TaskStatus(state=state, message=message)})


class PushAuthentication(WireModel):
    schemes: list[str] = Field(default_factory=list)
    credentials: str | None = None


class PushNotificationConfig(WireModel):
    id: str | None = None
    url: HttpUrl
    token: str | None = None
    authentication: PushAuthentication | None = None


class TaskPushNotificationConfig(WireModel):
    task_id: Id
    push_notification_config: PushNotificationConfig


class SendConfiguration(WireModel):
    blocking: bool = True
    history_length: int | None = Field(default=None, ge=0)
    accepted_output_modes: list[str] | None = None
    push_notification_config: PushNotificationConfig | None = None


class MessageSendParams(WireModel):
    message: Message
    configuration: SendConfiguration = Field(default_factory=SendConfiguration)
    metadata: dict[str, Any] | None = None


class TaskQueryParams(WireModel):
    id: Id
    history_length: int | None = Field(default=None, ge=0)


class TaskIdParams(WireModel):
    id: Id


class TaskListParams(WireModel):
    context_id: Id | None = None
    state: TaskState | None = None
    page_size: int = Field(default=50, ge=1, le=500)
    page_token: str | None = Field(default=None, pattern=PAGE_TOKEN_PATTERN)
    # Artifacts (the paid work) are listed only when the owner asks for them.
    include_artifacts: bool = False
