"""HTTP routes of the water service: leak candidates as GeoJSON, a leak's network map, flood risk, night flow."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, JSONResponse

from services.water import repository

_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")


def mount(app: FastAPI, s, pool, svc) -> FastAPI:
    @app.get("/leaks", tags=["water"], summary="Detected leaks: their ranked candidate pipes as GeoJSON lines")
    async def leaks(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.leaks(conn, limit=limit)
        feats = []
        for r in rows:
            for c in r["candidates"]:
                if c.get("pipe_id") not in svc.net.link_nodes:
                    continue
                feats.append({"type": "Feature", "id": f"{r['leak_id']}:{c['pipe_id']}",
                              "geometry": {"type": "LineString", "coordinates": svc.pipe_geometry(c["pipe_id"])},
                              "properties": {"leak_id": r["leak_id"], "dma": r["dma"], "kind": r["kind"],
                                             "status": r["status"], "detected_at": r["detected_at"].isoformat()
                                             if isinstance(r["detected_at"], datetime) else r["detected_at"],
                                             "estimated_flow_m3h": r["estimated_flow_m3h"], **c,
                                             "map_png": f"/leaks/{r['leak_id']}/map.png"}})
        return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")

    @app.get("/leaks/{leak_id}/map.png", tags=["water"], summary="The network map with a leak's candidate pipes")
    async def leak_map(leak_id: str) -> FileResponse:
        if not _ID.match(leak_id):
            raise HTTPException(422, "leak id may only hold letters, digits, '.', '_' and '-'")
        path = s.water_state_dir / "maps" / f"{leak_id}.png"
        if not path.exists():
            raise HTTPException(404, f"no map for leak {leak_id!r}: list the leaks with GET /leaks")
        return FileResponse(path, media_type="image/png")

    @app.get("/flood/risk", tags=["water"], summary="Flood risk per drainage catchment: level, projection, grade")
    async def flood_risk() -> JSONResponse:
        return JSONResponse(svc.flood_risk())

    @app.get("/mnf", tags=["water"], summary="Minimum night flow of the network water balance per night (m3/h)")
    async def mnf() -> JSONResponse:
        return JSONResponse(svc.night_flow)

    return app
