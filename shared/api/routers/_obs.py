"""Latest values and bucketed history of observations, shared by the domain routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from shared.api import repository
from shared.api.deps import BUCKETS, Page, Range

ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
SensorId = Annotated[str | None, Query(pattern=ID, description="one sensor", examples=["air-ref-01"])]
District = Annotated[str | None, Query(pattern=ID, description="district id", examples=["d05"])]
Bucket = Annotated[
    str,
    Query(
        pattern="^(" + "|".join(BUCKETS) + ")$",
        description="bucket width: " + ", ".join(BUCKETS),
        examples=["1h"],
    ),
]

LATEST_EXAMPLE = {
    "items": [
        {
            "sensor_id": "air-ref-01",
            "quantity": "pm25",
            "time": "2026-11-27T18:00:00Z",
            "value": 41.2,
            "unit": "ug/m3",
            "qc": 1,
            "district": "d09",
            "lat": 30.166,
            "lon": 120.205,
        }
    ],
    "limit": 100,
    "offset": 0,
    "next_offset": None,
}
HISTORY_EXAMPLE = {
    "items": [
        {
            "bucket": "2026-11-27T17:00:00Z",
            "sensor_id": "air-ref-01",
            "avg_value": 38.5,
            "min_value": 31.0,
            "max_value": 47.9,
            "n": 12,
        }
    ],
    "limit": 100,
    "offset": 0,
    "next_offset": None,
    "bucket": "1h",
    "aggregation": "date_bin",
}


def example(body: dict) -> dict:
    return {200: {"content": {"application/json": {"example": body}}}}


async def latest(
    request: Request,
    domains: list[str],
    quantity: str | None,
    district: str | None,
    sensor_id: str | None,
    page: Page,
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.latest(
            conn,
            domains=domains,
            quantity=quantity,
            district=district,
            sensor_id=sensor_id,
            limit=page.limit,
            offset=page.offset,
        )
    return page.wrap(rows)


async def history(
    request: Request,
    domains: list[str],
    quantity: str,
    bucket: str,
    rng: Range,
    district: str | None,
    sensor_id: str | None,
    page: Page,
) -> dict:
    ts = request.app.state.timescale
    async with request.app.state.pool.connection() as conn:
        rows = await repository.history(
            conn,
            timescale=ts,
            domains=domains,
            quantity=quantity,
            width=BUCKETS[bucket],
            start=rng.start,
            end=rng.end,
            district=district,
            sensor_id=sensor_id,
            limit=page.limit,
            offset=page.offset,
        )
    return {**page.wrap(rows), "bucket": bucket, "aggregation": "time_bucket" if ts else "date_bin"}
