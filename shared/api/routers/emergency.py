"""Emergency: incidents (GeoJSON, with timelines), equipment health, and — audited, admin only — worker data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from shared.api import repository
from shared.api.deps import Admin, OpenData, Paging, TimeRange, Viewer
from shared.api.routers import _obs

router = APIRouter(prefix="/api/v1/emergency", tags=["emergency"])

INCIDENT_EXAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "inc-0001",
            "geometry": {"type": "Point", "coordinates": [120.16, 30.27]},
            "properties": {
                "kind": "gas_release",
                "status": "open",
                "severity": "critical",
                "title_zh": "硫化氢泄漏",
                "title_en": "H2S release",
                "opened_at": "2026-11-27T09:12:00Z",
                "districts": ["d05"],
                "timeline": [{"status": "open", "at": "2026-11-27T09:12:00Z", "note": None}],
            },
        }
    ],
}


@router.get(
    "/incidents.geojson",
    summary="Incidents with their timelines (GeoJSON)",
    responses={200: {"content": {"application/geo+json": {"example": INCIDENT_EXAMPLE}}}},
)
async def incidents(
    request: Request,
    _: Viewer,
    page: Paging,
    status: Annotated[str | None, Query(pattern=_obs.ID, examples=["open"])] = None,
    kind: Annotated[str | None, Query(pattern=_obs.ID)] = None,
) -> JSONResponse:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.incidents(
            conn, status=status, kind=kind, limit=page.limit, offset=page.offset
        )
        events = await repository.incident_events(conn, [r["incident_id"] for r in rows])
    timeline: dict[str, list] = {}
    for e in events:
        timeline.setdefault(e["incident_id"], []).append(
            {"status": e["status"], "at": e["at"].isoformat(), "note": e["note"]}
        )
    feats = []
    for r in rows:
        geom = r["area_geojson"] or (
            {"type": "Point", "coordinates": [r["lon"], r["lat"]]}
            if r["lat"] is not None and r["lon"] is not None
            else None
        )
        feats.append(
            {
                "type": "Feature",
                "id": r["incident_id"],
                "geometry": geom,
                "properties": {
                    "kind": r["kind"],
                    "status": r["status"],
                    "severity": r["severity"],
                    "title_zh": r["title_zh"],
                    "title_en": r["title_en"],
                    "opened_at": r["opened_at"].isoformat(),
                    "updated_at": r["updated_at"].isoformat(),
                    "districts": r["districts"],
                    "related_alert_ids": r["related_alert_ids"],
                    "timeline": timeline.get(r["incident_id"], []),
                },
            }
        )
    return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")


@router.get("/equipment-health", summary="Fault early-warning score per machine")
async def equipment(
    request: Request, _: Viewer, page: Paging, rng: TimeRange, machine_id: _obs.SensorId = None
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.equipment_health(
            conn, machine_id=machine_id, start=rng.start, end=rng.end, limit=page.limit, offset=page.offset
        )
    return page.wrap(rows)


@router.get(
    "/latest",
    summary="Newest value per pump and fixed gas detector (never wearables)",
    responses=_obs.example(_obs.LATEST_EXAMPLE),
)
async def latest(
    request: Request,
    _: OpenData,
    page: Paging,
    quantity: Annotated[str | None, Query(pattern=_obs.ID, examples=["vibration_rms_mms"])] = None,
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.latest(request, ["equipment", "safety"], quantity, district, sensor_id, page)


@router.get("/worker-observations", summary="Personal wearable readings (admin only; every read is audited)")
async def worker_observations(
    request: Request,
    who: Admin,
    page: Paging,
    rng: TimeRange,
    reason: Annotated[
        str,
        Query(
            min_length=5,
            max_length=500,
            pattern=r"^[^\x00]+$",
            description="why you need personal data (audited)",
            examples=["incident inc-0001: fall investigation"],
        ),
    ],
    worker_id: _obs.SensorId = None,
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.worker_observations(
            conn,
            actor=who.id,
            role=who.role,
            worker_id=worker_id,
            start=rng.start,
            end=rng.end,
            reason=reason,
            limit=page.limit,
            offset=page.offset,
        )
    return page.wrap(rows)
