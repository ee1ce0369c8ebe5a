"""The one envelope every CityOps event travels in, on every Kafka topic."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Generic, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

P = TypeVar("P", bound=BaseModel)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[P]):
    """`event_id` is the idempotency key downstream: a consumer that sees it twice acts once."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()), description="unique id of this event")
    type: str = Field(description="event type, e.g. observation.air, alert, field_task")
    schema_version: int = Field(default=1, ge=1)
    source: str = Field(description="service or gateway that produced the event")
    occurred_at: AwareDatetime = Field(description="when the thing happened (sensor time for observations)")
    ingested_at: AwareDatetime | None = Field(default=None, description="when CityOps first received it")
    payload: P
