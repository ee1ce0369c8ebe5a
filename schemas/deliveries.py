"""Notification deliveries: one per (alert or task, recipient, channel)."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class NotificationDelivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_id: str
    idempotency_key: str = Field(description="hash of (source event, recipient, channel, tier): sent at most once")
    subject_kind: Literal["alert", "task"]
    subject_id: str
    recipient: str
    channel: Literal["webhook", "email", "mqtt", "kafka", "sms"]
    language: Literal["zh", "en"]
    tier: int = Field(ge=0, description="escalation tier, 0 = first recipients")
    status: Literal["pending", "sent", "failed", "dead"]
    attempts: int = Field(ge=0)
    error: str | None = None
    created_at: AwareDatetime
    sent_at: AwareDatetime | None = None
