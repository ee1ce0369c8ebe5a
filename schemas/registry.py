"""The sensor registry: every sensor the city knows, who may speak for it, and what it measures."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Domain = Literal["air", "water", "weather", "equipment", "safety"]


class QuantitySpec(BaseModel):
    """One measured quantity: its canonical unit and the physically valid range (QARTOD gross range)."""

    model_config = ConfigDict(extra="forbid")

    unit: str = Field(description="canonical unit, e.g. ug/m3, m, m3/h, degC, hPa, mm, m/s, deg, ppm, %LEL, bpm")
    valid_min: float
    valid_max: float
    # accepted alternative units on the wire, converted to `unit` by the gateway
    accepts: list[str] = Field(default_factory=list)
    # largest plausible change between consecutive readings (spike / rate-of-change), in unit per hour
    max_rate_per_h: float | None = None


class SensorSpec(BaseModel):
    """A registered sensor. `personal` sensors (wearables) carry personal data and go only to restricted topics."""

    model_config = ConfigDict(extra="forbid")

    sensor_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    domain: Domain
    kind: str = Field(description="e.g. reference_station, lowcost_pm, pressure, flow, level, drain_level, "
                      "rain_gauge, weather_station, wearable, machine")
    gateway_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{1,64}$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    district: str | None = None
    quantities: dict[str, QuantitySpec]
    personal: bool = False
    # domain-specific placement, e.g. {"node": "J-12"} on the water network, {"machine_id": "P-3"}
    meta: dict[str, str | float | int | bool] = Field(default_factory=dict)


class SensorRegistry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sensors: list[SensorSpec]

    def by_id(self) -> dict[str, SensorSpec]:
        return {s.sensor_id: s for s in self.sensors}

    def gateways(self) -> dict[str, list[SensorSpec]]:
        out: dict[str, list[SensorSpec]] = {}
        for s in self.sensors:
            out.setdefault(s.gateway_id, []).append(s)
        return out
