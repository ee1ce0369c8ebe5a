"""Schemas are defined once; the generated JSON Schema and AsyncAPI files match them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema
import yaml

from schemas import generate
from schemas.topics import KAFKA_TOPICS, MQTT_TOPICS


def test_checked_in_files_match_the_models():
    assert generate.main(["--check"]) == 0


def test_drift_is_detected(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "JSON_DIR", tmp_path)
    monkeypatch.setattr(generate, "ASYNCAPI", tmp_path / "asyncapi.yaml")
    assert generate.main([]) == 0
    victim = tmp_path / "alert.v1.json"
    victim.write_text(victim.read_text().replace('"dedup_key"', '"dedupKey"'))
    assert generate.main(["--check"]) == 1


def test_asyncapi_lists_every_topic_with_partitions_and_retention():
    doc = yaml.safe_load(generate.ASYNCAPI.read_text())
    for t in KAFKA_TOPICS:
        ch = doc["channels"][t.name]
        assert ch["bindings"]["kafka"]["partitions"] == t.partitions
        assert ch["bindings"]["kafka"]["topicConfiguration"]["retention.ms"] == t.retention_ms
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {m.pattern for m in MQTT_TOPICS} <= addresses


def test_an_alert_event_validates_against_its_published_schema():
    from schemas.alerts import Alert
    from shared.kafka import event_for_topic

    alert = Alert(alert_id="a1", domain="air", kind="aqi_exceedance", severity="major", title_zh="空气质量超标",
                  title_en="AQI exceedance", message_zh="中心区 AQI 165", message_en="Central AQI 165",
                  dedup_key="air:aqi:d05", raised_at=datetime.now(UTC))
    env = json.loads(event_for_topic("cityops.alerts.v1", "test", alert, occurred_at=alert.raised_at))
    schema = json.loads((generate.JSON_DIR / "alert.v1.json").read_text())
    jsonschema.validate(env, schema)
    env["payload"]["severity"] = "apocalyptic"
    try:
        jsonschema.validate(env, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("an invalid severity passed the published schema")
