"""Alerts raised by the domain services and dispatched by the notification service."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

AlertDomain = Literal["air", "water", "weather", "emergency", "platform"]
Severity = Literal["info", "minor", "major", "critical"]
# Chinese warning colours used by weather signals, flood warnings and AQI
WarningLevel = Literal["blue", "yellow", "orange", "red"]
AlertStatus = Literal["raised", "updated", "cleared"]


class GeoPoint(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Alert(BaseModel):
    """One alert. `dedup_key` names the condition (e.g. `air:aqi:d05`): repeats of the same key
    update one alert instead of paging again."""

    model_config = ConfigDict(extra="forbid")

    alert_id: str
    domain: AlertDomain
    kind: str = Field(description="e.g. aqi_exceedance, leak, flood_risk, rainstorm_signal, man_down, equipment_fault")
    severity: Severity
    level: WarningLevel | None = None
    status: AlertStatus = "raised"
    title_zh: str
    title_en: str
    message_zh: str
    message_en: str
    location: GeoPoint | None = None
    district: str | None = None
    dedup_key: str
    raised_at: AwareDatetime
    evidence: dict[str, Any] = Field(default_factory=dict)
