"""The air scenario generator for the city simulator."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from services.air_quality.domain.attribution import attribute_observations
from services.air_quality.domain.simulate import generate
from shared.city import default_city


@pytest.fixture(scope="module")
def scen():
    return generate(default_city(), pd.Timestamp("2026-03-01T00:00:00Z"), 48, seed=11)


def test_registry_fits_and_sizes(scen):
    scen.check()
    kinds = pd.Series([s.kind for s in scen.sensors]).value_counts()
    assert kinds["reference_station"] == 8 and kinds["lowcost_pm"] == 60
    assert len(scen.readings) < 150_000
    assert not any(s.personal for s in scen.sensors)
    x0, y0, x1, y1 = default_city().bbox
    assert all(x0 <= s.lon <= x1 and y0 <= s.lat <= y1 and s.district for s in scen.sensors)
    assert {s.gateway_id for s in scen.sensors} == {"gw-air-1", "gw-air-2", "gw-air-3"}
    for s in scen.sensors:
        r = scen.readings[scen.readings.sensor_id == s.sensor_id]
        for q, spec in s.quantities.items():
            v = r[r.quantity == q]["value"]
            assert len(v) and v.between(spec.valid_min, spec.valid_max).all(), (s.sensor_id, q)


def test_deterministic_for_seed(scen):
    again = generate(default_city(), pd.Timestamp("2026-03-01T00:00:00Z"), 48, seed=11)
    other = generate(default_city(), pd.Timestamp("2026-03-01T00:00:00Z"), 48, seed=12)
    pd.testing.assert_frame_equal(scen.readings, again.readings)
    assert scen.truth == again.truth
    assert not scen.readings["value"].equals(other.readings["value"])


def test_episode_in_last_60_percent_exceeds_and_is_traceable(scen):
    ep = [t for t in scen.truth if t["scenario"] == "pollution_episode"]
    assert len(ep) == 1
    ep = ep[0]
    start = pd.Timestamp("2026-03-01T00:00:00Z")
    assert pd.Timestamp(ep["start"]) >= start + pd.Timedelta(hours=0.4 * 48)
    assert ep["source_id"] in {s["source_id"] for s in scen.config["sources"]}
    assert ep["stations_exceeding"], "the episode must push a reference station over the limit"
    # the reference stations' readings, in the OBS shape, traced back to the named source
    r = scen.readings[scen.readings.sensor_id.str.startswith("air-ref")]
    wide = r.pivot_table(index=["time", "sensor_id"], columns="quantity", values="value").reset_index()
    specs = {s.sensor_id: s for s in scen.sensors}
    wide["station_id"] = wide["sensor_id"]
    wide["lat"] = wide["sensor_id"].map(lambda s: specs[s].lat)
    wide["lon"] = wide["sensor_id"].map(lambda s: specs[s].lon)
    src = pd.DataFrame(scen.config["sources"])
    res = attribute_observations(wide, src, "pm25", 75.0)
    top = [a.source_id for a in res
           if a.rank == 1 and pd.Timestamp(ep["start"]) <= a.time <= pd.Timestamp(ep["end"])]
    assert top and pd.Series(top).value_counts().index[0] == ep["source_id"]


def test_drifting_sensors_in_truth(scen):
    drift = [t for t in scen.truth if t["scenario"] == "sensor_drift"]
    assert len(drift) == 3
    lc = scen.readings[(scen.readings.sensor_id == drift[0]["sensor_id"]) & (scen.readings.quantity == "pm25")]
    first, last = lc["value"].iloc[: len(lc) // 3].mean(), lc["value"].iloc[-len(lc) // 4:].mean()
    assert np.isfinite(first) and np.isfinite(last)
