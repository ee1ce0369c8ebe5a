"""Dead letters: anything the platform refused, with the reason and the original bytes."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

DeadLetterReason = Literal[
    "malformed_json",
    "not_an_object",
    "schema_violation",
    "non_finite_value",
    "payload_too_large",
    "unknown_sensor",
    "gateway_not_owner",
    "topic_mismatch",
    "unknown_quantity",
    "unknown_unit",
    "timestamp_in_future",
    "timestamp_too_old",
    "duplicate",
    "bad_encoding",
    "processing_error",
]


class DeadLetter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason_code: DeadLetterReason
    reason: str = Field(description="what was wrong, in words a sensor engineer can act on")
    stage: str = Field(description="which service refused it, e.g. ingest, sink, air_quality")
    origin: str = Field(description="MQTT topic or Kafka topic/partition/offset it came from")
    gateway_id: str | None = None
    sensor_id: str | None = None
    original_b64: str = Field(description="the original bytes, base64")
    received_at: AwareDatetime
