"""What each domain's scenario generator hands to the city simulator.

Every domain writes `services/<domain>/domain/simulate.py` with

    def generate(city: City, start: pd.Timestamp, hours: float, seed: int) -> DomainScenario

The city simulator merges the domains, publishes the readings over MQTT through each
sensor's gateway in time order, and writes the ground truth to a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from schemas.registry import SensorSpec


@dataclass
class DomainScenario:
    domain: str
    sensors: list[SensorSpec]
    # columns: time (tz-aware UTC), sensor_id, quantity, value (canonical unit of the spec)
    readings: pd.DataFrame
    # one dict per injected event: {"scenario": "pipe_burst", "start": iso, "end": iso|None, ...details}
    truth: list[dict[str, Any]] = field(default_factory=list)
    # configuration the domain's streaming service needs (sources, network file, DMAs, zones …), JSON-able
    config: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Fail loudly if the scenario does not fit the registry."""
        ids = {s.sensor_id for s in self.sensors}
        missing = set(self.readings["sensor_id"].unique()) - ids
        if missing:
            raise ValueError(f"{self.domain}: readings for unregistered sensors {sorted(missing)[:5]}")
        specs = {s.sensor_id: s for s in self.sensors}
        for sid, q in self.readings[["sensor_id", "quantity"]].drop_duplicates().itertuples(index=False):
            if q not in specs[sid].quantities:
                raise ValueError(f"{self.domain}: sensor {sid} has no quantity {q!r} in the registry")
