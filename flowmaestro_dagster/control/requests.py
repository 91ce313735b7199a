"""What a caller asks of the control plane: the API's request bodies that services take."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowmaestro_dagster.spec.configs import queue_priority as parse_priority

__all__ = ["ExecutionCreate", "WorkflowSettingsIn", "parse_priority"]


class WorkflowSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int | str | None = None
    queue: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    concurrency_limit: int | None = Field(default=None, ge=1, le=10)
    one_at_a_time_per_user: bool | None = None
    idempotency_ttl_seconds: int | None = Field(default=None, ge=60, le=30 * 86_400)

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: Any) -> int | None:
        return None if value is None else parse_priority(value)


class ExecutionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: dict[str, Any] = Field(default_factory=dict)
    priority: int | str | None = None
    queue: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: Any) -> int | None:
        return None if value is None else parse_priority(value)
