"""Sensor observations: on the wire from a sensor (MQTT) and normalised on Kafka."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictFloat

from schemas.registry import Domain

# QARTOD flag values (IOOS QARTOD manual)
QC_PASS, QC_NOT_EVALUATED, QC_SUSPECT, QC_FAIL, QC_MISSING = 1, 2, 3, 4, 9
QcFlag = Literal[1, 2, 3, 4, 9]


class WireValue(BaseModel):
    """A value with an explicit unit, for sensors that do not report in the canonical unit."""

    model_config = ConfigDict(extra="forbid")
    value: StrictFloat
    unit: str


class SensorMessage(BaseModel):
    """What a sensor gateway publishes on MQTT topic `city/<gateway_id>/<sensor_id>`.

    `values` maps quantity -> number (canonical unit) or {value, unit}. `seq` is the sensor's
    message counter; (sensor_id, time) identifies a reading, so a resend is an exact duplicate.
    """

    model_config = ConfigDict(extra="forbid")

    sensor_id: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    time: AwareDatetime
    values: dict[str, StrictFloat | WireValue] = Field(min_length=1)
    seq: int | None = Field(default=None, ge=0)


class QualifiedValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: float
    unit: str
    qc: QcFlag = Field(description="aggregate QARTOD flag: 1 pass, 2 not evaluated, 3 suspect, 4 fail, 9 missing")
    qc_tests: dict[str, QcFlag] = Field(default_factory=dict, description="flag per QARTOD test")


class Observation(BaseModel):
    """A validated, unit-normalised, quality-flagged reading of one sensor at one time."""

    model_config = ConfigDict(extra="forbid")

    sensor_id: str
    domain: Domain
    kind: str
    gateway_id: str
    district: str | None
    lat: float
    lon: float
    observed_at: AwareDatetime
    values: dict[str, QualifiedValue]
