"""Vendor the JSON Schemas of the four FIWARE Smart Data Models we export, from the `pysmartdatamodels`
PyPI package (its `model-assets/smartdatamodels.json.gz` lists every model's properties with their
JSON Schema type, format, enum and bounds; `datamodels_metadata.json` has each model's `$id` and
required list). Run once when the models change; the result is checked in under schemas/:

    uv pip install --target /tmp/sdm --no-deps pysmartdatamodels==0.8.2.0
    python -m shared.opendata.vendor /tmp/sdm/pysmartdatamodels/model-assets
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

MODELS = ("AirQualityObserved", "WeatherObserved", "WaterObserved", "Alert")
OUT = Path(__file__).parent / "schemas"
SOURCE = "pysmartdatamodels 0.8.2.0 (PyPI), model-assets/smartdatamodels.json.gz + datamodels_metadata.json"
_KEYS = ("type", "format", "enum", "minimum", "maximum", "items", "description")
GEOMETRY = {
    "type": "object",
    "required": ["type", "coordinates"],
    "properties": {
        "type": {
            "type": "string",
            "enum": ["Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon"],
        },
        "coordinates": {"type": "array"},
    },
}


def build(assets: Path) -> dict[str, dict]:
    with gzip.open(assets / "smartdatamodels.json.gz") as f:
        props = json.load(f)
    meta = {
        m["dataModel"]: m
        for m in json.loads((assets / "datamodels_metadata.json").read_text())
        if m.get("dataModel") in MODELS
    }
    out = {}
    for model in MODELS:
        m = meta[model]
        rows: dict[str, list[dict]] = {}
        for r in props:
            if r.get("dataModel") == model and r.get("repoName") == m["subject"]:
                rows.setdefault(r["property"], []).append(r)
        properties: dict[str, dict] = {}
        for name, rs in rows.items():
            # a name that also names a nested field (geometry `type`, `coordinates`) is defined by hand below
            if len(rs) > 1 or name in ("type", "id", "location", "coordinates", "bbox"):
                continue
            spec = {k: rs[0][k] for k in _KEYS if k in rs[0]}
            if "type" in spec:
                properties[name] = spec
        properties["id"] = {"type": "string", "description": "Unique identifier of the entity (a URN)"}
        properties["type"] = {"type": "string", "enum": [model], "description": "NGSI-LD entity type"}
        properties["location"] = GEOMETRY
        out[model] = {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": m["$id"],
            "title": m["title"],
            "description": m["description"],
            "x-model-version": m["version"],
            "x-source": SOURCE,
            "type": "object",
            "required": m["required"],
            "properties": dict(sorted(properties.items())),
        }
    return out


def main(argv: list[str]) -> int:
    OUT.mkdir(exist_ok=True)
    for model, schema in build(Path(argv[0])).items():
        (OUT / f"{model}.schema.json").write_text(json.dumps(schema, indent=1, ensure_ascii=False) + "\n")
        print(model, len(schema["properties"]), "properties, required", schema["required"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
