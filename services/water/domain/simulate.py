"""Water scenario for the city simulator: a distribution network with a burst and a growing leak,
and drainage catchments with a rainstorm flood.

- Network: wntr's Net3 (97 nodes) stretched over the city's bounding box; 12 pressure loggers spread
  evenly and 3 placed where they localise leaks best,
  flow meters on pumps and reservoir/tank pipes, tank levels and smart meters, every 15 minutes,
  simulated with EPANET (pressure-dependent demand) including both leaks.
- Drainage: one catchment per low-lying district (at least two), each with a drain level, a
  river level and a rain gauge every 5 minutes; a linear-reservoir level driven by the rain.
- Timing (deterministic, documented in `config["timing"]`): first 40 % of the period normal;
  the growing leak starts at start + 0.42 × hours and ramps over 0.1 × hours; the burst, more
  than 1.5 km of pipe away (in another DMA when the network has several), at start + 0.72 × hours, once the growing leak has
  had time to be found (so the two are two leaks, not one); the storm's rain peaks at start + 0.8 × hours — the same rule the
  weather domain's generator uses for its stations — with a peak intensity from the seed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from schemas.registry import QuantitySpec, SensorSpec
from services.water.domain.flood import Catchment
from services.water.domain.hydraulics import LeakSpec, choose_sensors, simulate_scada, total_base_demand_m3h
from services.water.domain.network import load_network
from shared.city import City
from shared.simulator.scenario import DomainScenario

NETWORK = "Net3.inp"
_QTY = {
    "pressure": ("pressure", QuantitySpec(unit="m", valid_min=-5, valid_max=200, max_rate_per_h=60)),
    "flow": ("flow", QuantitySpec(unit="m3/h", valid_min=-20000, valid_max=20000, accepts=["L/s"])),
    "level": ("level", QuantitySpec(unit="m", valid_min=0, valid_max=50, max_rate_per_h=10)),
    "demand": ("demand", QuantitySpec(unit="m3/h", valid_min=0, valid_max=5000)),
}
_PREFIX = {"pressure": "wp", "flow": "wf", "level": "wl", "demand": "wm"}


def network_path() -> str:
    from pathlib import Path

    import wntr

    return str(Path(wntr.__file__).parent / "library" / "networks" / NETWORK)


def storm_peak(start: pd.Timestamp, hours: float) -> pd.Timestamp:
    """When the storm's rain peaks: start + 0.8 × hours, floored to 5 minutes."""
    return (pd.Timestamp(start) + pd.Timedelta(hours=0.8 * hours)).floor("5min")


def storm_peak_mm_per_h(seed: int) -> float:
    """Peak rain intensity of the storm, 40-80 mm/h, from the seed alone."""
    return 40.0 + 40.0 * np.random.default_rng([seed, 4]).random()


def storm_rain_mm_per_h(times: pd.DatetimeIndex, start: pd.Timestamp, hours: float, seed: int) -> np.ndarray:
    """Rain intensity of the storm: a Gaussian pulse of 1.5 h sd around the peak."""
    peak = storm_peak(start, hours)
    dt = (times - peak) / pd.Timedelta(hours=1)
    return storm_peak_mm_per_h(seed) * np.exp(-0.5 * (np.asarray(dt, dtype=float) / 1.5) ** 2)


def generate(city: City, start: pd.Timestamp, hours: float, seed: int, *, extra_loggers: int = 3) -> DomainScenario:
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    rng = np.random.default_rng(seed)
    net = load_network(network_path())
    sensors = with_placed_loggers(net, choose_sensors(net, n_pressure=12, n_meters=20, seed=seed),
                                  extra=extra_loggers)
    lat_lon = _placement(net, city)

    pipes = [p for p in net.pipes if net.pipe_length_m[p] > 50]
    leak_pipe = str(rng.choice(pipes))
    # two leaks a dispatcher can tell apart: the burst in another district metered area, far
    # along the pipes from the growing leak, and only after the growing leak has been found
    far = [p for p in pipes if net.pipe_distance_m(p, leak_pipe) > 1500.0]
    other_dma = [p for p in far if net.dma_of_link(p) != net.dma_of_link(leak_pipe)]
    burst_pipe = str(rng.choice(other_dma or far or [p for p in pipes if p != leak_pipe]))
    mean_demand = total_base_demand_m3h(net)
    burst = LeakSpec(burst_pipe, (start + pd.Timedelta(hours=0.72 * hours)).floor("15min"), 0.20 * mean_demand, "abrupt")
    growing = LeakSpec(leak_pipe, (start + pd.Timedelta(hours=0.42 * hours)).floor("15min"), 0.15 * mean_demand,
                       "incipient", ramp_hours=0.1 * hours)
    scada = simulate_scada(net, sensors, start, hours / 24.0, [growing, burst], seed=seed, network_seed=seed)

    specs: list[SensorSpec] = []
    id_of: dict[tuple[str, str], str] = {}
    for i, s in enumerate(sensors):
        sid = f"{_PREFIX[s.kind]}-{s.element}"
        id_of[(s.kind, s.sensor_id)] = sid
        node = s.element if s.kind != "flow" else net.link_nodes[s.element][0]
        lat, lon = lat_lon[node]
        qname, q = _QTY[s.kind]
        specs.append(SensorSpec(sensor_id=sid, domain="water", kind=s.kind, gateway_id=f"gw-water-{1 + i % 3}",
                                lat=lat, lon=lon, district=city.district_of(lat, lon), quantities={qname: q},
                                meta={"link" if s.kind == "flow" else "node": s.element}))
    readings = pd.DataFrame({
        "time": scada["time"],
        "sensor_id": [id_of[(k, s)] for k, s in zip(scada["kind"], scada["sensor_id"], strict=True)],
        "quantity": scada["kind"].map(lambda k: _QTY[k][0]),
        "value": scada["value"].astype(float),
    })

    catchments, drain_specs, drain_readings, flood_truth = _drainage(city, start, hours, seed)
    specs += drain_specs
    readings = pd.concat([readings, drain_readings], ignore_index=True).sort_values(["time", "sensor_id"], kind="stable")
    readings = readings.reset_index(drop=True)

    truth = [
        {"scenario": "pipe_burst", "start": burst.start.isoformat(), "end": None, "pipe_id": burst.pipe_id,
         "flow_m3h": round(burst.peak_flow_m3h, 2), "dma": net.dma_of_link(burst.pipe_id)},
        {"scenario": "incipient_leak", "start": growing.start.isoformat(), "end": None, "pipe_id": growing.pipe_id,
         "flow_m3h": round(growing.peak_flow_m3h, 2), "ramp_hours": growing.ramp_hours,
         "dma": net.dma_of_link(growing.pipe_id)},
        *flood_truth,
    ]
    config = {
        "network_file": NETWORK,
        "network_source": "wntr.library.networks",
        "step_minutes": {"scada": 15, "drainage": 5},
        "sensors": {id_of[(s.kind, s.sensor_id)]: {"kind": s.kind, "element": s.element} for s in sensors},
        "dmas": net.dmas(),
        "catchments": [{**c.__dict__, "thresholds_m": list(c.thresholds_m),
                        "sensors": {"drain_level": f"dl-{c.catchment_id}", "river_level": f"rl-{c.catchment_id}",
                                    "rain": f"rg-{c.catchment_id}"}} for c in catchments],
        "operations": [],
        # a demo has hours, not weeks: shorter windows than the batch defaults (12 h, 24 h); two leaks a few
        # hours apart, so the CUSUMs keep watching while the first one's window fills
        "monitor": {"smooth_hours": 2.0, "localise_hours": 2.0, "threshold_margin": 1.5,
                    "watch_while_localising": True, "localise_weighting": "white"},
        "training": {"leak_free_until": (start + pd.Timedelta(hours=0.4 * hours)).isoformat(),
                     "history": "services.water.domain.simulate.leak_free_history(config, start, days, seed)"},
        "timing": {"incipient_leak_start": "start + 0.42*hours (ramp 0.1*hours)",
                   "pipe_burst_start": "start + 0.72*hours, > 1.5 km of pipe from the growing leak (another DMA if any)",
                   "storm_peak": "start + 0.8*hours, floored to 5 min",
                   "storm_peak_mm_per_h": "40 + 40*U, U = numpy.random.default_rng([seed, 4]).random()",
                   "storm_shape": "Gaussian pulse, sd 1.5 h"},
        "seed": seed,
    }
    return DomainScenario("water", specs, readings, truth, config)


def with_placed_loggers(net, sensors: list, extra: int) -> list:
    """The utility's evenly spread pressure loggers plus `extra` where `cityops water place-loggers` says they
    help most to tell pipes apart (placement.place_loggers, the spread ones kept). Over 8 seeds x 4 start hours
    of this demo 3 more loggers put the top candidate within 300 m of 31 of 64 leaks instead of 25, and the
    burst of seed 7 (the demo's) 4th instead of 8th-9th among the candidates (`python -m bench.water.demo_signatures`)."""
    from services.water.domain.hydraulics import Sensor
    from services.water.domain.placement import place_loggers

    spread = tuple(s.element for s in sensors if s.kind == "pressure")
    added = place_loggers(net, len(spread) + extra, existing=spread)[len(spread):]
    loggers = [s for s in sensors if s.kind == "pressure"] + [Sensor(j, "pressure", j) for j in added]
    return loggers + [s for s in sensors if s.kind != "pressure"]


def leak_free_history(config: dict, start: pd.Timestamp, days: float, seed: int) -> pd.DataFrame:
    """Leak-free SCADA (contract long format, sensor ids of the scenario) for training a monitor
    before the demo starts — the city has years of history, the demo has hours."""
    from services.water.domain.localisation import Sensor

    net = load_network(network_path())
    sensors = [Sensor(v["element"] if v["kind"] != "demand" else v["element"], v["kind"], v["element"])
               for v in config["sensors"].values()]
    scada = simulate_scada(net, sensors, pd.Timestamp(start), days, [], seed=seed,
                           network_seed=int(config["seed"]))
    back = {(v["kind"], v["element"]): sid for sid, v in config["sensors"].items()}
    scada["sensor_id"] = [back[(k, e)] for k, e in zip(scada["kind"], scada["sensor_id"], strict=True)]
    return scada


def history_and_stream(scenario: DomainScenario, start: pd.Timestamp, history_days: float, seed: int) -> pd.DataFrame:
    """What the live service's monitor sees of a demo: `history_days` of leak-free history before the
    scenario's `start`, then the scenario's own SCADA — long format with the network's element names as
    sensor ids (as detection.scada_to_wide expects). For offline checks of the service's settings."""
    cfg = scenario.config
    hist = leak_free_history(cfg, pd.Timestamp(start) - pd.Timedelta(days=history_days), history_days, seed=seed)
    ids = cfg["sensors"]
    own = scenario.readings[scenario.readings["sensor_id"].isin(ids)].rename(columns={"quantity": "kind"}).copy()
    own["kind"] = own["sensor_id"].map(lambda s: ids[s]["kind"])
    both = pd.concat([hist, own[["time", "sensor_id", "kind", "value"]]], ignore_index=True)
    both["sensor_id"] = both["sensor_id"].map(lambda s: ids[s]["element"])
    return both


def node_lat_lon(net, city: City) -> dict[str, tuple[float, float]]:
    """(lat, lon) of every node as the generator placed it on the city (for maps, tasks and GeoJSON)."""
    return _placement(net, city)


def _placement(net, city: City) -> dict[str, tuple[float, float]]:
    """Stretch the network's coordinates over the middle 80 % of the city's bounding box."""
    lon0, lat0, lon1, lat1 = city.bbox
    xy = np.array(list(net.node_xy.values()))
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    out = {}
    for n, (x, y) in net.node_xy.items():
        fx = 0.1 + 0.8 * (x - x0) / ((x1 - x0) or 1.0)
        fy = 0.1 + 0.8 * (y - y0) / ((y1 - y0) or 1.0)
        out[n] = (lat0 + fy * (lat1 - lat0), lon0 + fx * (lon1 - lon0))
    return out


def _catchment_response(k: int) -> tuple[float, float]:
    """The k-th catchment's true response: level rise per mm of rain, recession per hour."""
    return 0.012 * (1.3 - 0.15 * k), 0.25


def _reservoir(rain_mm: np.ndarray, base: float, gain: float, rec: float, step_h: float) -> np.ndarray:
    level = np.empty(len(rain_mm))
    lv = base
    for i, r in enumerate(rain_mm):
        lv = lv + gain * r - rec * (lv - base) * step_h
        level[i] = lv
    return level


def drainage_history(config: dict, start: pd.Timestamp, days: float, seed: int) -> pd.DataFrame:
    """Drain levels and rain gauges of the scenario's catchments over `days` before the demo, with a few
    showers (5-25 mm/h peaks), in the contract's long format: the past a city's flood model learns from."""
    rng = np.random.default_rng([seed, 11])
    times = pd.date_range(pd.Timestamp(start), periods=int(days * 24 * 12), freq="5min")
    t_h = np.arange(len(times)) / 12.0
    parts = []
    for k, c in enumerate(config.get("catchments", [])):
        gain, rec = _catchment_response(k)
        rate = np.zeros(len(times))
        for _ in range(max(1, int(rng.poisson(days / 2.0)))):
            peak_h, size, width = rng.uniform(0, days * 24), rng.uniform(5.0, 25.0), rng.uniform(0.5, 1.5)
            rate += size * np.exp(-0.5 * ((t_h - peak_h) / width) ** 2)
        rain_mm = rate * (5 / 60)
        level = _reservoir(rain_mm, float(c["base_level_m"]), gain, rec, 5 / 60)
        sensors = c.get("sensors", {})
        parts.append(pd.DataFrame({"time": times, "sensor_id": sensors["drain_level"], "quantity": "water_level",
                                   "value": np.maximum(0.0, level + rng.normal(0, 0.01, len(times)))}))
        parts.append(pd.DataFrame({"time": times, "sensor_id": sensors["rain"], "quantity": "rain",
                                   "value": np.round(rain_mm, 2)}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["time", "sensor_id", "quantity",
                                                                                      "value"])


def _drainage(city: City, start: pd.Timestamp, hours: float, seed: int):
    rng = np.random.default_rng([seed, 7])
    low = [d for d in city.districts if d.low_lying] or list(city.districts)
    low = low[: max(2, min(4, len(low)))]
    times = pd.date_range(start, start + pd.Timedelta(hours=hours), freq="5min", inclusive="left")
    rain_rate = storm_rain_mm_per_h(times, start, hours, seed)
    catchments, specs, parts, truth = [], [], [], []
    for k, d in enumerate(low):
        cid = f"c{k + 1:02d}"
        base = 0.4 + 0.2 * k
        # thresholds sized so the storm reaches orange or red in the lowest catchments
        c = Catchment(cid, f"{d.name_zh}排水片区", f"{d.name_en} drainage catchment", d.district_id, base,
                      (base + 0.6, base + 1.0, base + 1.4, base + 1.8))
        catchments.append(c)
        gain, rec = _catchment_response(k)
        local_rain = rain_rate * float(rng.uniform(0.85, 1.15))
        drizzle = np.where(rng.random(len(times)) < 0.01, rng.exponential(2.0, len(times)), 0.0)
        rain_mm = (local_rain + drizzle) * (5 / 60)
        level = _reservoir(rain_mm, base, gain, rec, 5 / 60)
        river = base + 1.0 + 0.6 * (pd.Series(level - base).rolling(18, min_periods=1).mean().to_numpy())
        lat, lon = d.centre
        for sid, kind, q, vals, noise in (
            (f"dl-{cid}", "drain_level", "water_level", level, 0.01),
            (f"rl-{cid}", "river_level", "water_level", river, 0.01),
            (f"rg-{cid}", "rain_gauge", "rain", rain_mm, 0.0),
        ):
            spec = QuantitySpec(unit="mm", valid_min=0, valid_max=100) if q == "rain" else \
                QuantitySpec(unit="m", valid_min=0, valid_max=20, max_rate_per_h=5)
            specs.append(SensorSpec(sensor_id=sid, domain="water", kind=kind, gateway_id=f"gw-water-drain-{k % 2 + 1}",
                                    lat=lat, lon=lon, district=d.district_id, quantities={q: spec},
                                    meta={"catchment": cid}))
            v = np.maximum(0.0, vals + rng.normal(0, noise, len(times))) if noise else np.round(vals, 2)
            parts.append(pd.DataFrame({"time": times, "sensor_id": sid, "quantity": q, "value": v}))
        over = [(g, thr) for g, thr in zip(("blue", "yellow", "orange", "red"), c.thresholds_m, strict=True)
                if level.max() >= thr]
        if over:
            g, thr = over[-1]
            first = times[int(np.argmax(level >= c.thresholds_m[0]))]
            truth.append({"scenario": "rainstorm_flood", "start": first.isoformat(), "end": None,
                          "catchment_id": cid, "district": d.district_id, "max_grade": g,
                          "peak_level_m": round(float(level.max()), 2),
                          "storm_peak": storm_peak(start, hours).isoformat()})
    return catchments, specs, pd.concat(parts, ignore_index=True), truth


def check_detection(truth: dict, alerts: list[dict]) -> dict:
    """Did the services detect one injected scenario? `alerts` are the demo's alert rows.

    Leaks: a water leak alert raised at or after the leak's start whose ranked candidates hold the
    truth pipe, or whose top candidate is within 300 m pipe distance of it. Floods: a flood warning
    for the truth catchment; the note gives its lead time before the storm's rain peak.
    """
    start = pd.Timestamp(truth["start"])
    kind = truth.get("scenario")

    def _t(a: dict) -> pd.Timestamp:
        t = pd.Timestamp(a["raised_at"])
        return t.tz_localize("UTC") if t.tzinfo is None else t

    def _ev(a: dict) -> dict:
        ev = a.get("evidence") or {}
        if isinstance(ev, str):
            import json

            ev = json.loads(ev)
        return ev

    if kind in ("pipe_burst", "incipient_leak"):
        net = load_network(network_path())
        pipe = truth["pipe_id"]
        leaks = sorted((a for a in alerts if a.get("domain") == "water" and a.get("kind") == "leak"
                        and _t(a) >= start), key=_t)
        best_note = "no leak alert after the leak started"
        for a in leaks:
            ev = _ev(a)
            cands = [c["pipe_id"] for c in ev.get("candidates", [])]
            if not cands:
                continue
            d = net.pipe_distance_m(cands[0], pipe) if net.has_link(cands[0]) and net.has_link(pipe) else math.inf
            if pipe in cands or d <= 300.0:
                rank = cands.index(pipe) + 1 if pipe in cands else None
                # the episode's first alert (the alarm) is when it was detected; candidates came with an update
                first = min(_t(x) for x in leaks if x["alert_id"] == a["alert_id"])
                delay = (first - start) / pd.Timedelta(minutes=1)
                return {"detected": True, "at": first.isoformat(), "delay_min": round(float(delay), 1),
                        "note": f"pipe {pipe} " + (f"ranked {rank} of {len(cands)}" if rank else
                                                   f"{d:.0f} m from top candidate {cands[0]}")}
            best_note = f"leak alert(s) but pipe {pipe} not among candidates; top {cands[0]} is {d:.0f} m away"
        return {"detected": False, "at": None, "delay_min": None, "note": best_note}
    if kind == "rainstorm_flood":
        cid = truth["catchment_id"]
        hits = sorted((a for a in alerts if a.get("domain") == "water" and a.get("kind") == "flood_risk"
                       and _ev(a).get("catchment_id") == cid and a.get("level")), key=_t)
        if not hits:
            return {"detected": False, "at": None, "delay_min": None, "note": f"no flood warning for {cid}"}
        a = hits[0]
        peak = pd.Timestamp(truth.get("storm_peak") or start)
        lead_min = (peak - _t(a)) / pd.Timedelta(minutes=1)
        top = max(hits, key=lambda x: ("blue", "yellow", "orange", "red").index(x["level"]))["level"]
        return {"detected": True, "at": _t(a).isoformat(), "delay_min": round(float((_t(a) - start)
                                                                                  / pd.Timedelta(minutes=1)), 1),
                "note": f"{a['level']} warning {lead_min:.0f} min before the storm peak; highest {top} "
                        f"(truth {truth.get('max_grade')})"}
    return {"detected": False, "at": None, "delay_min": None, "note": f"unknown scenario {kind!r}"}


__all__ = ["check_detection", "drainage_history", "node_lat_lon", "generate", "leak_free_history", "storm_peak", "storm_peak_mm_per_h", "storm_rain_mm_per_h"]
