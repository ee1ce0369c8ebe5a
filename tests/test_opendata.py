"""Open data: the FIWARE Smart Data Models export validates against the vendored model schemas, the
AsyncAPI page is in step with the document, and the consumer quick-start in docs/ runs against real Kafka."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from shared.opendata import fiware
from shared.opendata.asyncapi_html import OUT, render

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def filled(db_url):
    from shared.dashboards import fill

    sim = fill.simulate(8.0, 11)
    counts = fill.fill(db_url, sim)
    counts.update(fill.fill_air_products(db_url, sim))
    return counts


@pytest.mark.stack
def test_export_validates_against_the_smart_data_models(db_url, filled):
    with psycopg.connect(db_url) as conn:
        entities = fiware.export(conn, start=filled["start"] - timedelta(hours=1), end=filled["end"])
    by_type: dict[str, list[dict]] = {}
    for e in entities:
        by_type.setdefault(e["type"], []).append(e)
    assert len(by_type.get("AirQualityObserved", [])) > 100 and by_type.get("WaterObserved")
    errors = [(e["id"], err) for e in entities for err in fiware.validate(e)]
    assert errors == []
    aq = by_type["AirQualityObserved"]
    assert all(0.0 <= e["relativeHumidity"] <= 1.0 for e in aq if "relativeHumidity" in e)
    assert all(-180.0 <= e["windDirection"] <= 180.0 for e in aq if "windDirection" in e)
    assert any("pm25" in e for e in aq) and all(
        e["id"].startswith("urn:ngsi-ld:AirQualityObserved:") for e in aq
    )
    assert len({e["id"] for e in entities}) == len(entities)
    # wearables never leave: no entity refers to a personal sensor
    with psycopg.connect(db_url) as conn:
        personal = {r[0] for r in conn.execute("SELECT sensor_id FROM sensors WHERE personal").fetchall()}
    assert personal and not [e for e in entities if e.get("refDevice", "").rsplit(":", 1)[-1] in personal]


WX_HOUR = datetime(2026, 1, 15, 10, tzinfo=UTC)
# six 10-minute readings of one weather station in each of two hours, as the station sends them
WX_READINGS = {
    "temp": [5.0, 5.2, 5.4, 5.6, 5.8, 6.0],
    "pres": [1012.0, 1012.2, 1012.4, 1012.6, 1012.8, 1013.0],
    "dewp": [1.0, 1.0, 1.2, 1.2, 1.4, 1.4],
    "rain": [2.0, 1.0, 0.5, 0.5, 3.0, 1.0],
    "wind_dir": [350.0, 355.0, 5.0, 10.0, 352.0, 8.0],
    "wind_speed": [4.0] * 6,
}


@pytest.mark.stack
def test_weather_export_sums_rain_averages_wind_as_vectors_and_has_pressure_and_dew_point(db_url):
    """Before, the export averaged every quantity: a north wind (350°..10°) left as -180 (south), an hour
    of rain came out at a sixth of its total, and pressure and dew point were never exported because the
    mapping asked for `pressure`, which weather stations never send (they send `pres` and `dewp`). Now
    rain is the hour's total, wind direction the mean of unit vectors, and both missing attributes are there."""
    from schemas.registry import QuantitySpec, SensorSpec
    from services.weather.domain.simulate import QUANTITIES
    from shared.storage import queries
    from shared.storage.registry import upsert_sensors

    station = SensorSpec(
        sensor_id="wx-export-01", domain="weather", kind="weather_station", gateway_id="gw-weather-1",
        lat=30.25, lon=120.15, district="d05",
        quantities={q: QuantitySpec(unit=u, valid_min=lo, valid_max=hi) for q, (u, lo, hi, _) in QUANTITIES.items()},
    )
    rows = []
    for hour, turn in ((WX_HOUR, 0.0), (WX_HOUR + timedelta(hours=1), 180.0)):
        for q, values in WX_READINGS.items():
            for i, v in enumerate(values):
                v = (v + turn) % 360.0 if q == "wind_dir" else v
                rows.append({"time": hour + timedelta(minutes=10 * i), "sensor_id": station.sensor_id, "quantity": q,
                             "value": v, "unit": station.quantities[q].unit, "qc": 1, "domain": "weather",
                             "district": "d05"})
    # a reading QC failed is not rain that fell
    rows.append({**rows[0], "quantity": "rain", "value": 40.0, "qc": 4, "time": WX_HOUR + timedelta(minutes=5)})
    with psycopg.connect(db_url) as conn:
        upsert_sensors(conn, [station])
        conn.cursor().executemany(queries.INSERT_OBSERVATION, rows)
        conn.commit()
        if conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()[0]:
            conn.autocommit = True
            conn.execute(queries.REFRESH_HOURLY, {"start": WX_HOUR, "end": WX_HOUR + timedelta(hours=2)})
        entities = fiware.export(conn, start=WX_HOUR, end=WX_HOUR + timedelta(hours=2))
    wx = sorted((e for e in entities if e["refDevice"].endswith(":wx-export-01")), key=lambda e: e["dateObserved"])
    assert [e["dateObserved"] for e in wx] == ["2026-01-15T10:00:00Z", "2026-01-15T11:00:00Z"]
    assert [fiware.validate(e) for e in wx] == [[], []]
    north, south = wx
    assert north["precipitation"] == 8.0 and south["precipitation"] == 8.0
    assert abs(north["windDirection"]) < 0.5 and abs(abs(south["windDirection"]) - 180.0) < 0.5
    assert north["atmosphericPressure"] == 1012.5 and north["dewPoint"] == 1.2
    assert north["temperature"] == 5.5 and north["windSpeed"] == 4.0


def _alert(**over) -> dict:
    a = {
        "alert_id": "a-1",
        "domain": "air",
        "kind": "pm25_exceedance",
        "severity": "major",
        "title_zh": "PM2.5 超标",
        "title_en": "PM2.5 above limit",
        "message_zh": "d05 区 PM2.5 超标",
        "message_en": "PM2.5 above limit in d05",
        "lat": 30.25,
        "lon": 120.15,
        "district": "d05",
        "raised_at": datetime(2026, 11, 27, 9, tzinfo=UTC),
        "resolved_at": None,
    }
    return {**a, **over}


@pytest.mark.parametrize(
    "domain,severity",
    [
        ("air", "major"),
        ("weather", "info"),
        ("safety", "critical"),
        ("water", "minor"),
        ("equipment", "major"),
    ],
)
def test_alerts_become_valid_alert_entities(domain, severity):
    e = fiware.alert_entity(_alert(domain=domain, severity=severity))
    assert fiware.validate(e) == []
    assert e["category"] in fiware.schema("Alert")["properties"]["category"]["enum"]


def test_the_schemas_catch_a_broken_entity():
    e = fiware.alert_entity(_alert())
    assert fiware.validate({**e, "severity": "major"})  # not a model severity
    assert fiware.validate({k: v for k, v in e.items() if k != "dateIssued"})
    assert fiware.validate({**e, "location": {"type": "Blob", "coordinates": [1, 2]}})
    for model in ("AirQualityObserved", "WeatherObserved", "WaterObserved", "Alert"):
        s = fiware.schema(model)
        assert s["x-source"].startswith("pysmartdatamodels") and s["$id"].startswith(
            "https://smart-data-models"
        )


def test_asyncapi_page_is_generated_and_in_step():
    html = render()
    assert OUT.read_text(encoding="utf-8") == html, (
        "docs/asyncapi.html is out of date: cityops opendata asyncapi-html"
    )
    assert "cityops.observations.air.v1" in html and 'class="restricted"' in html
    assert html.count('<section id="msg-') >= 10


@pytest.mark.stack
def test_quickstart_consumer_runs_against_kafka(stack_env):
    """The code block of docs/open-data.md, run as written, reads and validates a real air observation."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from services.ingest.domain.validate import Accepted, Validator
    from shared import kafka
    from shared.dashboards import fill

    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "open-data.md").read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    sim = fill.simulate(8.0, 11)
    sensor = next(s for s in sim.sensors if s.domain == "air")
    msgs = sim.messages()
    row = msgs[msgs["sensor_id"] == sensor.sensor_id].iloc[-1]
    payload = json.dumps(
        {"sensor_id": sensor.sensor_id, "time": row["time"].isoformat(), "values": row["values"]}
    )
    res = Validator({sensor.sensor_id: sensor}).validate(
        f"city/{sensor.gateway_id}/{sensor.sensor_id}", payload.encode(), datetime.now(UTC)
    )
    assert isinstance(res, Accepted)
    topic = f"test.opendata.{secrets.token_hex(4)}"
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]

    async def publish():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        p = kafka.producer(bootstrap)
        await p.start()
        try:
            await p.send_and_wait(topic, res.value, key=res.key)
        finally:
            await p.stop()

    asyncio.run(publish())
    # the outside reader may read this test's topic as it may the public ones; it logs in over SCRAM
    from shared.stack.config import StackConfig
    from shared.stack.kafka import OUTSIDE_READER, Kafka

    broker = Kafka(StackConfig.from_env())
    broker.allow_read(OUTSIDE_READER, [topic])
    login = dict(line.split("=", 1) for line in broker.client_env_file(OUTSIDE_READER).read_text().splitlines())
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, **stack_env, **login, "TOPIC": topic, "GROUP": f"external-{topic}", "ONCE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith(sensor.sensor_id + " ") and "pm25" in proc.stdout
