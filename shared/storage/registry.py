"""The sensor registry in the database (table `sensors`)."""

from __future__ import annotations

import json

import psycopg

from schemas.registry import SensorSpec


def upsert_sensors(conn: psycopg.Connection, sensors: list[SensorSpec]) -> int:
    with conn.cursor() as cur:
        for s in sensors:
            cur.execute(
                """INSERT INTO sensors (sensor_id, domain, kind, gateway_id, lat, lon, district, quantities, personal, meta)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (sensor_id) DO UPDATE SET domain = EXCLUDED.domain, kind = EXCLUDED.kind,
                     gateway_id = EXCLUDED.gateway_id, lat = EXCLUDED.lat, lon = EXCLUDED.lon,
                     district = EXCLUDED.district, quantities = EXCLUDED.quantities,
                     personal = EXCLUDED.personal, meta = EXCLUDED.meta""",
                (
                    s.sensor_id, s.domain, s.kind, s.gateway_id, s.lat, s.lon, s.district,
                    json.dumps({k: v.model_dump() for k, v in s.quantities.items()}), s.personal, json.dumps(s.meta),
                ),
            )
    return len(sensors)


def load_sensors(conn: psycopg.Connection) -> dict[str, SensorSpec]:
    rows = conn.execute(
        "SELECT sensor_id, domain, kind, gateway_id, lat, lon, district, quantities, personal, meta FROM sensors"
    ).fetchall()
    return {
        r[0]: SensorSpec(
            sensor_id=r[0], domain=r[1], kind=r[2], gateway_id=r[3], lat=r[4], lon=r[5], district=r[6],
            quantities=r[7], personal=r[8], meta=r[9],
        )
        for r in rows
    }
