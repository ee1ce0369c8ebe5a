"""HTTP routes of the air-quality service: the latest grid (GeoJSON, PNG heat map), station AQI,
and the latest source attribution."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import JSONResponse, Response

from services.air_quality import repository

Pollutant = Literal["pm25", "pm10", "no2", "o3"]


def _jsonable(rows: list[dict]) -> list[dict]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


def mount(app: FastAPI, s, pool, svc) -> FastAPI:
    half_deg = svc.grid.cell_km / 2 / 111.32

    @app.get("/grid/latest", tags=["air"], summary="The newest grid of a pollutant as GeoJSON cells (value, 1-sigma, AQI)")
    async def grid_latest(pollutant: Annotated[Pollutant, Query()] = "pm25") -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.latest_grid(conn, pollutant)
        if not rows:
            raise HTTPException(404, f"no {pollutant} grid yet: the first grid follows the first "
                                     f"{svc.update.total_seconds() / 60:g} simulated minutes of observations — retry "
                                     "shortly")
        import math

        feats = []
        for r in _jsonable(rows):
            dlon = half_deg / max(math.cos(math.radians(r["lat"])), 1e-6)
            lat, lon = r["lat"], r["lon"]
            ring = [[lon - dlon, lat - half_deg], [lon + dlon, lat - half_deg], [lon + dlon, lat + half_deg],
                    [lon - dlon, lat + half_deg], [lon - dlon, lat - half_deg]]
            feats.append({"type": "Feature", "id": r["cell_id"], "geometry": {"type": "Polygon", "coordinates": [ring]},
                          "properties": {**r, "pollutant": pollutant}})
        return JSONResponse({"type": "FeatureCollection", "valid_at": rows[0]["valid_at"].isoformat(),
                             "pollutant": pollutant, "features": feats}, media_type="application/geo+json")

    @app.get("/grid/latest.png", tags=["air"], summary="Heat map (PNG) of the newest grid", response_class=Response)
    async def grid_png(pollutant: Annotated[Pollutant, Query()] = "pm25") -> Response:
        from services.air_quality.domain.heatmap import heatmap_png

        lg = svc.latest
        if lg is None or pollutant not in lg.values:
            raise HTTPException(404, f"no {pollutant} grid computed by this process yet — retry shortly")
        png = await asyncio.to_thread(heatmap_png, lg.grid, lg.values[pollutant],
                                      title=f"{pollutant.upper()} µg/m³ {lg.valid_at.isoformat()}",
                                      sensors=lg.sensors if pollutant == "pm25" else None)
        return Response(png, media_type="image/png")

    @app.get("/aqi/latest", tags=["air"], summary="Hourly and 24-h AQI (HJ 633) of every reference station")
    async def aqi_latest() -> JSONResponse:
        return JSONResponse({"stations": svc.aqi_latest()})

    @app.get("/attribution/latest", tags=["air"], summary="Ranked sources of the newest attributed hour (溯源)")
    async def attribution_latest(hours: Annotated[int, Query(ge=1, le=168)] = 1) -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.latest_attributions(conn, hours)
        return JSONResponse({"attributions": _jsonable(rows)})

    return app
