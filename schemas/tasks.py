"""Field tasks for inspectors and crews, published by domain services, assigned by notification."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.alerts import GeoPoint

TaskKind = Literal["inspect_source", "repair_pipe", "inspect_drain", "respond_incident", "inspect_equipment",
                   "calibrate_sensor"]
TaskStatus = Literal["open", "assigned", "accepted", "on_site", "done", "rejected", "cancelled"]


class FieldTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str
    kind: TaskKind
    domain: Literal["air", "water", "weather", "emergency"]
    priority: Literal["low", "normal", "high", "urgent"]
    title_zh: str
    title_en: str
    description_zh: str
    description_en: str
    location: GeoPoint
    district: str | None = None
    required_skills: list[str] = Field(default_factory=list)
    due_at: AwareDatetime | None = None
    related_alert_id: str | None = None
    created_at: AwareDatetime
    evidence: dict[str, Any] = Field(default_factory=dict, description="numbers and links behind the task, e.g. map_png")


class FieldTaskUpdate(BaseModel):
    """A change of a task's state (assigned, accepted, on_site, done, rejected …)."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    status: TaskStatus
    assignee: str | None = None
    note: str | None = None
    at: AwareDatetime
