"""Simulated SCADA data with leaks (wntr + EPANET, pressure-dependent demand).

Used by the benchmark's LeakDB-style scenarios, the city-demo generator and the tests. Every
customer demand follows its original pattern, resampled to the simulation step, times a noisy
group factor (junctions are split into `n_demand_groups` groups sharing one noise series, which
keeps the `.inp` small); base demands and pipe roughness are perturbed once per scenario; a leak
is an extra outflow at a new junction in the middle of its pipe — a step (burst, abrupt) or a
ramp (incipient) — and stays until the end.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.water.domain.localisation import Sensor
from services.water.domain.network import WaterNetwork, run_epanet


@dataclass(frozen=True)
class LeakSpec:
    pipe_id: str
    start: pd.Timestamp
    peak_flow_m3h: float
    kind: str = "abrupt"  # abrupt | incipient
    ramp_hours: float = 0.0  # incipient: hours from start to peak flow


@dataclass(frozen=True)
class Uncertainty:
    demand_noise: float = 0.05  # sd of the per-step group demand factor
    base_demand: float = 0.10  # sd of the per-junction base demand factor
    roughness: float = 0.05  # sd of the per-pipe roughness factor
    pressure_noise_m: float = 0.05
    flow_noise_rel: float = 0.005
    level_noise_m: float = 0.01
    meter_noise_rel: float = 0.02


def choose_sensors(net: WaterNetwork, n_pressure: int, n_meters: int, seed: int) -> list[Sensor]:
    """Pressure loggers spread over the network (farthest-point sampling), flow on pumps and on
    reservoir/tank pipes, tank levels, and smart meters at random junctions."""
    rng = np.random.default_rng(seed)
    junctions = net.junctions
    xy = np.array([net.node_xy[j] for j in junctions])
    first = int(rng.integers(len(junctions)))
    chosen = [first]
    dmin = np.hypot(*(xy - xy[first]).T)
    while len(chosen) < min(n_pressure, len(junctions)):
        nxt = int(np.argmax(dmin))
        chosen.append(nxt)
        dmin = np.minimum(dmin, np.hypot(*(xy - xy[nxt]).T))
    sensors = [Sensor(junctions[i], "pressure", junctions[i]) for i in chosen]
    supplies = set(net.reservoirs) | set(net.tanks)
    flow_links = list(net.wn.pump_name_list)
    for link, (a, b) in net.link_nodes.items():
        if link not in flow_links and (a in supplies or b in supplies):
            flow_links.append(link)
    sensors += [Sensor(link, "flow", link) for link in flow_links]
    sensors += [Sensor(t, "level", t) for t in net.tanks]
    meters = rng.choice(junctions, size=min(n_meters, len(junctions)), replace=False)
    sensors += [Sensor(str(j), "demand", str(j)) for j in meters]
    return sensors


def simulate_scada(
    net: WaterNetwork,
    sensors: list[Sensor],
    start: pd.Timestamp,
    days: float,
    leaks: list[LeakSpec],
    *,
    seed: int,
    step_min: int = 15,
    uncertainty: Uncertainty = Uncertainty(),
    n_demand_groups: int = 12,
    network_seed: int | None = None,
) -> pd.DataFrame:
    """Run one scenario; return SCADA in the contract's long format: time, sensor_id, kind, value.

    `network_seed` fixes the network's realisation (base demands, roughness, demand groups) apart
    from the day-to-day noise, so a leak-free history and a later period can share one city.
    """
    import wntr

    logging.getLogger("wntr").setLevel(logging.ERROR)
    rng = np.random.default_rng(seed)
    rng_net = np.random.default_rng([seed if network_seed is None else network_seed, 17])
    wn = copy.deepcopy(net.wn)
    step = step_min * 60
    n_steps = int(round(days * 86400 / step))
    wn.options.time.duration = n_steps * step
    wn.options.time.hydraulic_timestep = step
    wn.options.time.report_timestep = step
    wn.options.time.pattern_timestep = step
    wn.options.time.pattern_start = 0
    wn.options.time.start_clocktime = 0
    wn.options.time.quality_timestep = step
    wn.options.quality.parameter = "NONE"
    wn.options.hydraulic.demand_model = "PDD"
    wn.options.hydraulic.required_pressure = 15.0
    wn.options.hydraulic.minimum_pressure = 0.0
    t_h = np.arange(n_steps + 1) * step / 3600.0

    def resample(pattern_name: str | None) -> np.ndarray:
        if pattern_name is None or pattern_name not in wn.pattern_name_list:
            return np.ones_like(t_h)
        mult = np.asarray(net.wn.get_pattern(pattern_name).multipliers, dtype=float)
        pstep = net.wn.options.time.pattern_timestep / 3600.0 or 1.0
        period = len(mult) * pstep
        tt = np.arange(len(mult) + 1) * pstep
        return np.interp(t_h % period, tt, np.append(mult, mult[0]))

    # a gentle weekly cycle: weekends use a little more water at home
    week = 1.0 + 0.05 * (((start + pd.to_timedelta(t_h, unit="h")).day_of_week >= 5).astype(float))
    new_patterns: dict[tuple[str | None, int], str] = {}
    for j in net.junctions:
        node = wn.get_node(j)
        dl = node.demand_timeseries_list
        if len(dl) == 0:
            continue
        base = sum(float(d.base_value) for d in dl)
        pat = dl[0].pattern_name if dl[0].pattern else wn.options.hydraulic.pattern
        g = int(rng_net.integers(n_demand_groups))
        key = (pat, g)
        if key not in new_patterns:
            noise = np.empty_like(t_h)
            e = 0.0
            for i in range(len(t_h)):  # AR(1): demand deviations persist for hours
                e = 0.9 * e + np.sqrt(1 - 0.81) * rng.normal()
                noise[i] = e
            mult = resample(pat) * week * np.clip(1.0 + uncertainty.demand_noise * noise, 0.2, None)
            name = f"dg{len(new_patterns)}"
            wn.add_pattern(name, list(mult))
            new_patterns[key] = name
        while len(dl) > 0:
            del dl[0]
        node.add_demand(max(0.0, base * (1 + uncertainty.base_demand * rng_net.normal())), new_patterns[key])
    for p in wn.pipe_name_list:
        pipe = wn.get_link(p)
        pipe.roughness = float(pipe.roughness) * float(np.clip(1 + uncertainty.roughness * rng_net.normal(), 0.7, 1.3))

    t0 = pd.Timestamp(start)
    for i, leak in enumerate(leaks):
        node = f"LEAK-{i}"
        wn = wntr.morph.split_pipe(wn, leak.pipe_id, f"{leak.pipe_id}-LEAKB-{i}", node, return_copy=False)
        rel_h = (leak.start - t0) / pd.Timedelta(hours=1)
        if leak.kind == "incipient" and leak.ramp_hours > 0:
            ramp = np.clip((t_h - rel_h) / leak.ramp_hours, 0.0, 1.0)
        else:
            ramp = (t_h >= rel_h).astype(float)
        wn.add_pattern(f"lp{i}", list(ramp))
        wn.get_node(node).add_demand(leak.peak_flow_m3h / 3600.0, f"lp{i}")

    # (wntr and EPANET write their files into the working directory unless run like this)
    res = run_epanet(wn)
    times = t0 + pd.to_timedelta(res.node["pressure"].index.to_numpy(dtype=float), unit="s")
    parts = []
    for s in sensors:
        if s.kind == "pressure":
            v = res.node["pressure"][s.element].to_numpy() + rng.normal(0, uncertainty.pressure_noise_m, len(times))
        elif s.kind == "level":
            v = res.node["pressure"][s.element].to_numpy() + rng.normal(0, uncertainty.level_noise_m, len(times))
        elif s.kind == "flow":
            q = res.link["flowrate"][s.element].to_numpy() * 3600.0
            v = q * (1 + rng.normal(0, uncertainty.flow_noise_rel, len(times)))
        elif s.kind == "demand":
            d = res.node["demand"][s.element].to_numpy() * 3600.0
            v = np.maximum(0.0, d * (1 + rng.normal(0, uncertainty.meter_noise_rel, len(times))))
        else:
            continue
        parts.append(pd.DataFrame({"time": times, "sensor_id": s.sensor_id, "kind": s.kind, "value": v}))
    return pd.concat(parts, ignore_index=True).sort_values(["time", "sensor_id"], kind="stable").reset_index(drop=True)


def total_base_demand_m3h(net: WaterNetwork) -> float:
    """Mean customer demand of the network (base demands times their patterns' means), m³/h."""
    wn = net.wn
    total = 0.0
    for j in net.junctions:
        for d in wn.get_node(j).demand_timeseries_list:
            pat = d.pattern_name or wn.options.hydraulic.pattern
            mult = np.mean(wn.get_pattern(pat).multipliers) if pat and pat in wn.pattern_name_list else 1.0
            total += float(d.base_value) * float(mult)
    return total * 3600.0 * float(wn.options.hydraulic.demand_multiplier or 1.0)
