"""Air quality: station values, bucketed history, the 以算代测 grid as GeoJSON, source tracing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from shared.api import repository
from shared.api.deps import OpenData, Paging, TimeRange
from shared.api.routers import _obs

router = APIRouter(prefix="/api/v1/air", tags=["air"])
Pollutant = Literal["pm25", "pm10", "no2", "o3"]
AirQuantity = Literal["pm25", "pm10", "no2", "o3", "temp", "rh", "wind_speed", "wind_dir"]


@router.get(
    "/latest",
    summary="Newest good value per station and quantity",
    responses=_obs.example(_obs.LATEST_EXAMPLE),
)
async def latest(
    request: Request,
    _: OpenData,
    page: Paging,
    quantity: AirQuantity | None = None,
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.latest(request, ["air"], quantity, district, sensor_id, page)


@router.get(
    "/history",
    summary="Bucketed mean/min/max of good data per station",
    responses=_obs.example(_obs.HISTORY_EXAMPLE),
)
async def history(
    request: Request,
    _: OpenData,
    page: Paging,
    rng: TimeRange,
    pollutant: Pollutant = "pm25",
    bucket: _obs.Bucket = "1h",
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.history(request, ["air"], pollutant, bucket, rng, district, sensor_id, page)


GRID_EXAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "c-012-007",
            "geometry": {"type": "Point", "coordinates": [120.15, 30.25]},
            "properties": {
                "valid_at": "2026-11-27T18:00:00Z",
                "pollutant": "pm25",
                "value": 52.3,
                "std": 6.1,
                "aqi": 72,
                "district": "d05",
            },
        }
    ],
}


@router.get(
    "/grid.geojson",
    summary="Grid estimate (以算代测) as GeoJSON points",
    responses={200: {"content": {"application/geo+json": {"example": GRID_EXAMPLE}}}},
)
async def grid(
    request: Request,
    _: OpenData,
    page: Paging,
    pollutant: Pollutant = "pm25",
    at: Annotated[
        datetime | None, Query(description="newest estimate at or before (default: newest)")
    ] = None,
) -> JSONResponse:
    at = at.replace(tzinfo=UTC) if at is not None and at.tzinfo is None else at
    async with request.app.state.pool.connection() as conn:
        rows = await repository.air_grid(
            conn, pollutant=pollutant, at=at, limit=page.limit, offset=page.offset
        )
    feats = [
        {
            "type": "Feature",
            "id": r["cell_id"],
            "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
            "properties": {
                "valid_at": r["valid_at"].isoformat(),
                "pollutant": pollutant,
                "value": r["value"],
                "std": r["std"],
                "aqi": r["aqi"],
                "district": r["district"],
            },
        }
        for r in rows
    ]
    return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")


@router.get("/source-attributions", summary="Source tracing (溯源): contribution per station and source")
async def attributions(
    request: Request, _: OpenData, page: Paging, rng: TimeRange, pollutant: Pollutant = "pm25"
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.source_attributions(
            conn, pollutant=pollutant, start=rng.start, end=rng.end, limit=page.limit, offset=page.offset
        )
    return page.wrap(rows)
