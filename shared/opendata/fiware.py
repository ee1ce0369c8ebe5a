"""Observations and alerts as FIWARE Smart Data Models in NGSI-LD (key-values form, with @context).

One entity per public sensor and hour (good data, QC 1/2: hourly means, but rain is the hour's total
and wind direction the direction of the mean wind unit vector) — AirQualityObserved for air stations,
WeatherObserved for weather stations, WaterObserved for river and drain levels and flows — and one
Alert per alert. Units follow the models: relative humidity as a fraction 0..1, wind direction in
degrees -180..180, pollutant concentrations in µg/m³, pressure in hPa, dew point in °C, precipitation
in mm (l/m²) per hour. Each entity validates against the model's JSON Schema vendored in `schemas/`
(see `vendor.py` for where they come from).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

from shared.opendata import repository

SCHEMAS = Path(__file__).parent / "schemas"
CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"
CONTEXT = {
    "AirQualityObserved": "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld",
    "WaterObserved": "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/context.jsonld",
    "WeatherObserved": "https://raw.githubusercontent.com/smart-data-models/dataModel.Weather/master/context.jsonld",
    "Alert": "https://raw.githubusercontent.com/smart-data-models/dataModel.Alert/master/context.jsonld",
}
# our quantity -> (model attribute, conversion)
_PCT = ("relativeHumidity", lambda v: round(v / 100.0, 4))
_DIR = ("windDirection", lambda v: round(((v + 180.0) % 360.0) - 180.0, 2))
MAPPING: dict[str, tuple[list[str], dict[str, tuple[str, Any]]]] = {
    "AirQualityObserved": (
        ["air"],
        {
            "pm25": ("pm25", None),
            "pm10": ("pm10", None),
            "no2": ("no2", None),
            "o3": ("o3", None),
            "temp": ("temperature", None),
            "rh": _PCT,
            "wind_speed": ("windSpeed", None),
            "wind_dir": _DIR,
        },
    ),
    "WeatherObserved": (
        ["weather"],
        {
            "temp": ("temperature", None),
            "rh": _PCT,
            "wind_speed": ("windSpeed", None),
            "wind_dir": _DIR,
            "rain": ("precipitation", None),
            "pres": ("atmosphericPressure", None),
            "dewp": ("dewPoint", None),
        },
    ),
    "WaterObserved": (["water"], {"water_level": ("height", None), "flow": ("flow", None)}),
}
# Readings that are amounts per reading (rain: mm in each 10 minutes; the weather service sums them too)
# add up to the hour; bearings average as unit vectors, not as numbers.
SUMMED = ["rain"]
CIRCULAR = ["wind_dir"]
ALERT_CATEGORY = {
    "air": "environment",
    "weather": "weather",
    "water": "environment",
    "equipment": "security",
    "safety": "health",
    "emergency": "security",
}
ALERT_SEVERITY = {"info": "informational", "minor": "low", "major": "high", "critical": "critical"}
PROVIDER = "CityOps"


@cache
def schema(model: str) -> dict:
    return json.loads((SCHEMAS / f"{model}.schema.json").read_text())


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def observed_entities(rows: list[dict], model: str) -> list[dict]:
    """Pivot hourly rows (sensor, bucket, quantity, value) into one entity per sensor and hour."""
    _, attrs = MAPPING[model]
    out: dict[tuple[str, datetime], dict] = {}
    for r in rows:
        if r["quantity"] not in attrs:
            continue
        key = (r["sensor_id"], r["bucket"])
        e = out.get(key)
        if e is None:
            e = out[key] = {
                "id": f"urn:ngsi-ld:{model}:cityops:{r['sensor_id']}:{r['bucket']:%Y%m%dT%H}",
                "type": model,
                "dateObserved": _iso(r["bucket"]),
                "location": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
                "refDevice": f"urn:ngsi-ld:Device:cityops:{r['sensor_id']}",
                "dataProvider": PROVIDER,
                "source": "https://cityops.example/api/v1",
                "@context": [CONTEXT[model], CORE_CONTEXT],
            }
            if r["district"]:
                e["areaServed"] = r["district"]
        name, conv = attrs[r["quantity"]]
        e[name] = conv(r["value"]) if conv else round(r["value"], 4)
    return list(out.values())


def alert_entity(a: dict) -> dict:
    e: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Alert:cityops:{a['alert_id']}",
        "type": "Alert",
        "category": ALERT_CATEGORY.get(a["domain"], "security"),
        "subCategory": a["kind"],
        "severity": ALERT_SEVERITY.get(a["severity"], "medium"),
        "alertSource": f"cityops:{a['domain']}",
        "dateIssued": _iso(a["raised_at"]),
        "validFrom": _iso(a["raised_at"]),
        "name": f"{a['title_zh']} / {a['title_en']}",
        "description": f"{a['message_zh']} / {a['message_en']}",
        "dataProvider": PROVIDER,
        "@context": [CONTEXT["Alert"], CORE_CONTEXT],
    }
    if a["resolved_at"]:
        e["validTo"] = _iso(a["resolved_at"])
    if a["lat"] is not None and a["lon"] is not None:
        e["location"] = {"type": "Point", "coordinates": [a["lon"], a["lat"]]}
    if a["district"]:
        e["areaServed"] = a["district"]
    return e


def export(conn: psycopg.Connection, *, start: datetime, end: datetime) -> list[dict]:
    """Every entity of [start, end): observed models first, then alerts."""
    out = []
    for model, (domains, attrs) in MAPPING.items():
        rows = repository.hourly(
            conn, domains=domains, quantities=list(attrs), summed=SUMMED, circular=CIRCULAR, start=start, end=end
        )
        out += observed_entities(rows, model)
    out += [alert_entity(a) for a in repository.alerts(conn, start=start, end=end)]
    return out


def validate(entity: dict) -> list[str]:
    """Schema errors of one entity against its Smart Data Model (empty when valid)."""
    from jsonschema import Draft7Validator, FormatChecker

    body = {k: v for k, v in entity.items() if k != "@context"}
    v = Draft7Validator(schema(entity["type"]), format_checker=FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in v.iter_errors(body)]
