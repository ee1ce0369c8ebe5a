"""Water: network values (flow, pressure, levels, rain), bucketed history, leaks as GeoJSON."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from shared.api import repository
from shared.api.deps import OpenData, Paging, TimeRange
from shared.api.routers import _obs

router = APIRouter(prefix="/api/v1/water", tags=["water"])
WaterQuantity = Literal["flow", "pressure", "level", "demand", "water_level", "rain"]


@router.get("/latest", summary="Newest good value per sensor", responses=_obs.example(_obs.LATEST_EXAMPLE))
async def latest(
    request: Request,
    _: OpenData,
    page: Paging,
    quantity: WaterQuantity | None = None,
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.latest(request, ["water"], quantity, district, sensor_id, page)


@router.get(
    "/history",
    summary="Bucketed mean/min/max of good data per sensor",
    responses=_obs.example(_obs.HISTORY_EXAMPLE),
)
async def history(
    request: Request,
    _: OpenData,
    page: Paging,
    rng: TimeRange,
    quantity: WaterQuantity = "flow",
    bucket: _obs.Bucket = "1h",
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.history(request, ["water"], quantity, bucket, rng, district, sensor_id, page)


LEAK_EXAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "leak-20261127-01",
            "geometry": None,
            "properties": {
                "detected_at": "2026-11-27T03:10:00Z",
                "pipe_id": "P-129",
                "dma": "dma-2",
                "kind": "burst",
                "status": "open",
                "estimated_flow_m3h": 21.5,
                "candidates": [{"pipe_id": "P-129", "score": 0.62}, {"pipe_id": "P-131", "score": 0.21}],
            },
        }
    ],
}


def _point(candidates) -> dict | None:
    for c in candidates or []:
        if (
            isinstance(c, dict)
            and isinstance(c.get("lat"), int | float)
            and isinstance(c.get("lon"), int | float)
        ):
            return {"type": "Point", "coordinates": [c["lon"], c["lat"]]}
    return None


@router.get(
    "/leaks.geojson",
    summary="Detected leaks with their candidate pipes (GeoJSON)",
    responses={200: {"content": {"application/geo+json": {"example": LEAK_EXAMPLE}}}},
)
async def leaks(
    request: Request,
    _: OpenData,
    page: Paging,
    status: Annotated[
        Literal["open", "resolved"] | None,
        Query(description="open: its alert not yet resolved after the repair; resolved", examples=["open"]),
    ] = None,
    dma: Annotated[str | None, Query(pattern=_obs.ID)] = None,
) -> JSONResponse:
    # a leak's state comes from its alert (the dashboards' rule, queries.LEAKS_WITH_STATE), not leaks.status
    async with request.app.state.pool.connection() as conn:
        rows = await repository.leaks(conn, status=status, dma=dma, limit=page.limit, offset=page.offset)
    feats = [
        {
            "type": "Feature",
            "id": r["leak_id"],
            "geometry": _point(r["candidates"]),
            "properties": {
                "detected_at": r["detected_at"].isoformat(),
                "pipe_id": r["pipe_id"],
                "dma": r["dma"],
                "kind": r["kind"],
                "status": r["status"],
                "estimated_flow_m3h": r["estimated_flow_m3h"],
                "candidates": r["candidates"],
            },
        }
        for r in rows
    ]
    return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")
