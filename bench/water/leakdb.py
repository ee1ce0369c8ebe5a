"""LeakDB-style scenarios on the networks wntr ships (Vrachimis et al., LeakDB, 2018, in spirit).

Each scenario: several weeks at 15-minute steps, pressure-dependent demand, demand and
roughness uncertainty, sensor noise, a leak-free first part, then 0-3 leaks — abrupt (burst) or
incipient (a ramp over 12-96 h) — of 3-15 % of the network's mean demand (log-uniform), on
random pipes. Deterministic for the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.water.domain.hydraulics import LeakSpec, choose_sensors, simulate_scada, total_base_demand_m3h
from services.water.domain.localisation import Sensor
from services.water.domain.network import WaterNetwork

START = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday


@dataclass
class Scenario:
    network: str
    seed: int
    scada: pd.DataFrame
    sensors: list[Sensor]
    leaks: list[LeakSpec]
    train_until: pd.Timestamp
    end: pd.Timestamp


def make_scenario(net: WaterNetwork, name: str, seed: int, *, days: float = 35.0, train_days: float = 14.0,
                  n_pressure: int = 30, n_meters: int = 100, n_leaks: int | None = None,
                  loggers: list[str] | None = None) -> Scenario:
    """`loggers`: junctions of the pressure loggers (e.g. placement.place_loggers); default spread over the
    network by farthest-point sampling (hydraulics.choose_sensors)."""
    rng = np.random.default_rng(seed)
    # a utility's loggers stay put; scenarios vary the water, not the sensor layout
    sensors = choose_sensors(net, n_pressure, n_meters, seed=1000)
    if loggers is not None:
        sensors = [Sensor(j, "pressure", j) for j in loggers] + [s for s in sensors if s.kind != "pressure"]
    mean_demand = total_base_demand_m3h(net)
    n_leaks = int(rng.choice([0, 1, 1, 2, 2, 3])) if n_leaks is None else n_leaks
    pipes = [p for p in net.pipes if net.pipe_length_m[p] > 1.0]
    leaks = []
    for pipe in rng.choice(pipes, size=n_leaks, replace=False):
        start = START + pd.Timedelta(days=train_days + 1) + pd.Timedelta(hours=float(rng.uniform(0, (days - train_days - 8) * 24)))
        start = start.floor("15min")
        size = float(np.exp(rng.uniform(np.log(0.03), np.log(0.15)))) * mean_demand
        if rng.random() < 0.5:
            leaks.append(LeakSpec(str(pipe), start, size, "abrupt"))
        else:
            leaks.append(LeakSpec(str(pipe), start, size, "incipient", ramp_hours=float(rng.uniform(12, 96))))
    leaks.sort(key=lambda s: s.start)
    scada = simulate_scada(net, sensors, START, days, leaks, seed=seed)
    return Scenario(name, seed, scada, sensors, leaks, START + pd.Timedelta(days=train_days), START + pd.Timedelta(days=days))
