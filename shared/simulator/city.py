"""The simulated city: every domain's scenario merged, registered, and published over MQTT.

`build()` asks each domain's generator (`services/<domain>/domain/simulate.py`) for its
sensors, readings and injected events, and adds a misbehaving gateway that sends the kinds
of bad input the platform must dead-letter. `publish()` replays the readings through each
gateway's own MQTT credentials in time order, compressed into a few real minutes, with the
real publish time in an MQTT v5 user property for latency measurement.
"""

from __future__ import annotations

import collections
import importlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from schemas.registry import SensorSpec
from shared.city import City, default_city
from shared.simulator.scenario import DomainScenario

logger = logging.getLogger("cityops.simulator")

DOMAIN_GENERATORS = {
    "air": "services.air_quality.domain.simulate",
    "water": "services.water.domain.simulate",
    "weather": "services.weather.domain.simulate",
    "emergency": "services.emergency.domain.simulate",
}


@dataclass
class SimulatedCity:
    city: City
    start: pd.Timestamp
    hours: float
    seed: int
    scenarios: list[DomainScenario]
    # (time, sensor_id, gateway_id, payload dict) sorted by time; built lazily
    bad_messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sensors(self) -> list[SensorSpec]:
        return [s for sc in self.scenarios for s in sc.sensors]

    @property
    def gateways(self) -> list[str]:
        return sorted({s.gateway_id for s in self.sensors} | {b["gateway_id"] for b in self.bad_messages})

    @property
    def truth(self) -> list[dict[str, Any]]:
        return [dict(t, domain=sc.domain) for sc in self.scenarios for t in sc.truth]

    def messages(self) -> pd.DataFrame:
        """One row per MQTT message: time, sensor_id, gateway_id, values (dict). Readings of one sensor at one
        time travel together, as a real device sends them."""
        gw = {s.sensor_id: s.gateway_id for s in self.sensors}
        frames = [sc.readings[["time", "sensor_id", "quantity", "value"]] for sc in self.scenarios if len(sc.readings)]
        if not frames:
            return pd.DataFrame(columns=["time", "sensor_id", "values", "gateway_id"])
        r = pd.concat(frames, ignore_index=True).sort_values(["time", "sensor_id"], kind="stable")
        t = r["time"].to_numpy()
        sid = r["sensor_id"].to_numpy()
        q = r["quantity"].to_numpy()
        v = r["value"].to_numpy(dtype=float)
        starts = np.flatnonzero(np.r_[True, (t[1:] != t[:-1]) | (sid[1:] != sid[:-1])])
        ends = np.r_[starts[1:], len(r)]
        values = [dict(zip(q[a:b], v[a:b].tolist(), strict=True)) for a, b in zip(starts, ends, strict=True)]
        out = pd.DataFrame({"time": t[starts], "sensor_id": sid[starts], "values": values})
        out["time"] = pd.to_datetime(out["time"], utc=True)
        out["gateway_id"] = out["sensor_id"].map(gw)
        return out.reset_index(drop=True)

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "truth.json").write_text(json.dumps(self.truth, indent=1, default=str, ensure_ascii=False))
        (out_dir / "registry.json").write_text(
            json.dumps([s.model_dump() for s in self.sensors], indent=1, ensure_ascii=False))
        config = {
            "city": {"name": self.city.name, "centre_lat": self.city.centre_lat, "centre_lon": self.city.centre_lon,
                     "districts": [{"district_id": d.district_id, "name_zh": d.name_zh, "name_en": d.name_en,
                                    "bbox": list(d.bbox), "land_use": d.land_use, "low_lying": d.low_lying}
                                   for d in self.city.districts]},
            "start": self.start.isoformat(), "hours": self.hours, "seed": self.seed,
            "domains": {sc.domain: sc.config for sc in self.scenarios},
        }
        (out_dir / "city_config.json").write_text(json.dumps(config, indent=1, default=str, ensure_ascii=False))


def build(*, hours: float = 36.0, seed: int = 7, end: pd.Timestamp | None = None,
          domains: list[str] | None = None, city: City | None = None, bad_input: bool = True) -> SimulatedCity:
    """Generate the city. The period ends at `end` (default: now), so every reading is in the past."""
    city = city or default_city()
    end = (end or pd.Timestamp.now(tz="UTC")).floor("min")
    start = end - pd.Timedelta(hours=hours)
    scenarios = []
    for name in domains or list(DOMAIN_GENERATORS):
        mod = importlib.import_module(DOMAIN_GENERATORS[name])
        t0 = time.perf_counter()
        sc = mod.generate(city, start, hours, seed)
        sc.check()
        logger.info("domain generated", extra={"fields": {"domain": name, "sensors": len(sc.sensors),
                                                           "readings": len(sc.readings),
                                                           "seconds": round(time.perf_counter() - t0, 1)}})
        scenarios.append(sc)
    sim = SimulatedCity(city, start, hours, seed, scenarios)
    if bad_input:
        sim.bad_messages = bad_input_messages(sim, np.random.default_rng(seed))
    return sim


def bad_input_messages(sim: SimulatedCity, rng: np.random.Generator) -> list[dict[str, Any]]:
    """A misbehaving field: each entry is published raw and must end in the dead-letter topic."""
    sensors = sim.sensors
    if not sensors:
        return []
    a, b = sensors[0], sensors[-1]
    q = next(iter(a.quantities))
    t = (sim.start + pd.Timedelta(hours=sim.hours * 0.5)).isoformat()
    def j(obj: Any) -> bytes:
        return json.dumps(obj).encode()
    cases = [
        ("malformed_json", a, b"{\"sensor_id\": \"" + a.sensor_id.encode() + b"\", "),
        ("unknown_sensor", a, j({"sensor_id": "ghost-999", "time": t, "values": {q: 1.0}}), "ghost-999"),
        ("gateway_not_owner", a, j({"sensor_id": b.sensor_id, "time": t, "values": {next(iter(b.quantities)): 1.0}}),
         b.sensor_id) if a.gateway_id != b.gateway_id else None,
        ("non_finite_value", a, f'{{"sensor_id": "{a.sensor_id}", "time": "{t}", "values": {{"{q}": NaN}}}}'.encode()),
        ("schema_violation", a, j({"sensor_id": a.sensor_id, "time": t, "values": {q: "high"}})),
        ("timestamp_in_future", a, j({"sensor_id": a.sensor_id, "time": "2099-01-01T00:00:00+00:00",
                                      "values": {q: 1.0}})),
    ]
    out = []
    for c in cases:
        if c is None:
            continue
        reason, sensor, payload = c[0], c[1], c[2]
        topic_sensor = c[3] if len(c) > 3 else sensor.sensor_id
        out.append({"expect": reason, "gateway_id": sensor.gateway_id,
                    "topic": f"city/{sensor.gateway_id}/{topic_sensor}", "payload": payload})
    return out


class Publisher:
    """One paho client per gateway, each with that gateway's own credentials."""

    def __init__(self, host: str, port: int, passwords: dict[str, str]):
        import paho.mqtt.client as mqtt

        self.clients: dict[str, Any] = {}
        for gw, pw in passwords.items():
            c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{gw}",
                            protocol=mqtt.MQTTv5)
            c.username_pw_set(gw, pw)
            c.max_inflight_messages_set(500)
            c.max_queued_messages_set(0)
            c.connect(host, port, keepalive=60)
            c.loop_start()
            self.clients[gw] = c
        self._pending: collections.deque = collections.deque()

    def publish(self, gateway_id: str, topic: str, payload: bytes) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("published_at", repr(time.time()))
        info = self.clients[gateway_id].publish(topic, payload, qos=1, properties=props)
        self._pending.append(info)
        if len(self._pending) > 5000:
            self._drain(keep=1000)

    def _drain(self, keep: int = 0) -> None:
        while len(self._pending) > keep:
            self._pending.popleft().wait_for_publish(timeout=60)

    def close(self) -> None:
        self._drain()
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


def publish(sim: SimulatedCity, *, minutes: float, host: str, port: int, passwords: dict[str, str],
            progress: bool = True) -> dict[str, Any]:
    """Replay the city in `minutes` of real time. Returns counts per domain and gateway."""
    msgs = sim.messages()
    pub = Publisher(host, port, passwords)
    domain_of = {s.sensor_id: s.domain for s in sim.sensors}
    counts: dict[str, int] = {}
    t_sim0 = sim.start.value / 1e9
    span = max(sim.hours * 3600.0, 1.0)
    speed = span / max(minutes * 60.0, 1e-3)
    wall0 = time.monotonic()
    bad = list(sim.bad_messages)
    bad_at = len(msgs) // 2
    times = (msgs["time"].dt.as_unit("ns").astype("int64").to_numpy() / 1e9) if len(msgs) else np.array([])
    last_report = 0.0
    for i, (sid, gw, vals) in enumerate(zip(msgs["sensor_id"], msgs["gateway_id"], msgs["values"], strict=True)):
        due = (times[i] - t_sim0) / speed
        lag = due - (time.monotonic() - wall0)
        if lag > 0:
            time.sleep(lag)
        payload = json.dumps({"sensor_id": sid, "time": pd.Timestamp(times[i], unit="s", tz="UTC").isoformat(),
                              "values": vals, "seq": i}, separators=(",", ":")).encode()
        pub.publish(gw, f"city/{gw}/{sid}", payload)
        d = domain_of[sid]
        counts[d] = counts.get(d, 0) + 1
        if i == bad_at:
            for b in bad:
                pub.publish(b["gateway_id"], b["topic"], b["payload"])
            counts["bad_input"] = len(bad)
        if progress and time.monotonic() - last_report > 10:
            last_report = time.monotonic()
            print(f"  simulator: {i + 1:,}/{len(msgs):,} messages published "
                  f"(sim time {pd.Timestamp(times[i], unit='s', tz='UTC'):%m-%d %H:%M})", flush=True)
    if len(msgs) <= bad_at and bad:
        for b in bad:
            pub.publish(b["gateway_id"], b["topic"], b["payload"])
        counts["bad_input"] = len(bad)
    pub.close()
    return {"published": counts, "total": int(sum(counts.values())), "seconds": time.monotonic() - wall0}
