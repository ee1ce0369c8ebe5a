"""Model outputs the services publish for dashboards and other city systems."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.alerts import GeoPoint


class GridCell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cell_id: str
    lat: float
    lon: float
    value: float
    std: float = Field(ge=0)
    aqi: int | None = None


class AirGrid(BaseModel):
    """A gridded estimate (以算代测) of one pollutant at one time, in µg/m³ (CO in mg/m³)."""

    model_config = ConfigDict(extra="forbid")
    pollutant: Literal["pm25", "pm10", "no2", "o3", "so2", "co"]
    valid_at: AwareDatetime
    cell_size_m: float
    method: str
    cells: list[GridCell]


class StationForecast(BaseModel):
    """A forecast or nowcast of one variable at one station for several horizons."""

    model_config = ConfigDict(extra="forbid")
    station_id: str
    variable: str
    unit: str
    issued_at: AwareDatetime
    model: str = Field(description="the model chosen (or 'blend') for this station and variable")
    horizons_h: list[int]
    values: list[float]
    p10: list[float] | None = None
    p90: list[float] | None = None


class SourceAttribution(BaseModel):
    model_config = ConfigDict(extra="forbid")
    station_id: str
    at: AwareDatetime
    pollutant: str
    observed: float
    contributions: list[dict[str, Any]] = Field(description="[{source_id, contribution, confidence, rank}]")


class Bulletin(BaseModel):
    """An automatically written forecast product (预报服务产品) for one district."""

    model_config = ConfigDict(extra="forbid")
    bulletin_id: str
    district: str
    issued_at: AwareDatetime
    text_zh: str
    text_en: str
    signals: list[str] = Field(default_factory=list)
    chart_png_path: str | None = None
    html_path: str | None = None


class Incident(BaseModel):
    model_config = ConfigDict(extra="forbid")
    incident_id: str
    kind: Literal["flood", "gas_release", "equipment_fault", "worker_safety", "pollution_episode", "leak", "other"]
    status: Literal["detected", "dispatched", "acknowledged", "on_site", "resolved", "reported"]
    severity: Literal["info", "minor", "major", "critical"]
    title_zh: str
    title_en: str
    location: GeoPoint | None = None
    districts: list[str] = Field(default_factory=list)
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    related_alert_ids: list[str] = Field(default_factory=list)
    area_geojson: dict[str, Any] | None = Field(default=None, description="e.g. an evacuation polygon")
    report_path: str | None = None
