"""HTTP routes of the emergency service: incidents (JSON, GeoJSON, HTML and PDF report, PNG map), machine health,
and a worker's recent track and health — role-checked, and every read written to the audit log."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, Header, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from services.emergency import repository
from shared.notify.domain.auth import read_token
from shared.notify.domain.config import load_roster

_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,80}$")


def _jsonable(rows: list[dict]) -> list[dict]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


def mount(app: FastAPI, s, pool, svc) -> FastAPI:
    # who holds which role now: a token lives 12 h and outlives a removal or a demotion in the roster
    roles_of = {p.id: set(p.roles) for p in load_roster(s.notify_roster).people}

    @app.get("/emergency/incidents", tags=["emergency"], summary="Latest incidents with status and report path")
    async def incidents(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
        async with pool.connection() as conn:
            return JSONResponse(_jsonable(await repository.incidents(conn, limit)))

    @app.get("/emergency/incidents.geojson", tags=["emergency"], summary="Incidents as GeoJSON (areas or points)")
    async def incidents_geojson(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.incidents(conn, limit)
        feats = []
        for r in _jsonable(rows):
            geom = r.pop("area_geojson") or ({"type": "Point", "coordinates": [r["lon"], r["lat"]]}
                                            if r["lat"] is not None else None)
            feats.append({"type": "Feature", "id": r["incident_id"], "geometry": geom, "properties": r})
        return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")

    def _incident_file(incident_id: str, sub: str, ext: str) -> Path:
        if not _ID.match(incident_id):
            raise HTTPException(422, "incident id may only hold letters, digits, '.', '_' and '-'")
        path = s.emergency_state_dir / sub / f"{incident_id}.{ext}"
        if not path.exists():
            raise HTTPException(404, f"no {sub[:-1]} for incident {incident_id!r} yet; reports are drawn a few "
                                     "seconds after an incident opens — retry shortly, or list /emergency/incidents")
        return path

    @app.get("/emergency/incidents/{incident_id}/report", tags=["emergency"], response_class=HTMLResponse,
             summary="The bilingual HTML incident report")
    async def report(incident_id: str) -> HTMLResponse:
        return HTMLResponse(_incident_file(incident_id, "reports", "html").read_text(encoding="utf-8"))

    @app.get("/emergency/incidents/{incident_id}/report.pdf", tags=["emergency"], response_class=FileResponse,
             summary="The bilingual incident report as a PDF document (the file incidents.report_path names)")
    async def report_pdf(incident_id: str) -> FileResponse:
        return FileResponse(_incident_file(incident_id, "reports", "pdf"), media_type="application/pdf",
                            filename=f"{incident_id}.pdf", content_disposition_type="inline")

    @app.get("/emergency/incidents/{incident_id}/map.png", tags=["emergency"], summary="The incident map (PNG)")
    async def incident_map(incident_id: str) -> FileResponse:
        return FileResponse(_incident_file(incident_id, "maps", "png"), media_type="image/png")

    @app.get("/emergency/equipment", tags=["emergency"], summary="Newest fault score of every machine")
    async def equipment() -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.equipment_latest(conn)
        trained = {m.machine_id: m.monitor is not None for m in svc.machines.values()}
        return JSONResponse([{**r, "trained": trained.get(r["machine_id"])} for r in _jsonable(rows)])

    @app.get("/emergency/workers/{worker_id}/track", tags=["emergency", "personal data"],
             summary="A worker's recent positions and health readings (safety officer or admin; audited)")
    async def worker_track(
        worker_id: str,
        reason: Annotated[str, Query(min_length=5, max_length=500, description="why you read personal data (audited)")],
        hours: Annotated[float, Query(gt=0, le=168)] = 24.0,
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        secret = s.token_secret()
        if not secret:
            raise HTTPException(503, "personal data is closed: no token secret configured; set "
                                     "CITYOPS_EMERGENCY_SESSION_SECRET or CITYOPS_NOTIFY_SESSION_SECRET")
        token = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
        claims = read_token(secret, token) if token else None
        if claims is None:
            raise HTTPException(401, "log in to the notification service (POST /api/login) and send "
                                     "'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"})
        held = roles_of.get(str(claims.get("sub")))
        if held is None or claims.get("role") not in held:
            why_en = (f"this token's role {claims.get('role')!r} is no longer yours" if held is not None
                      else f"{claims.get('sub')!r} is no longer in the roster")
            raise HTTPException(401, "账号或角色已变更，请重新登录 · " + why_en + ": log in again (POST /api/login on the "
                                     "notification service) for a token with your current role",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if claims.get("role") not in s.emergency_personal_roles:
            raise HTTPException(403, f"role {claims.get('role')!r} may not read personal data; it needs one of "
                                     f"{s.emergency_personal_roles} (ask the safety manager)")
        if not _ID.match(worker_id):
            raise HTTPException(422, "worker id may only hold letters, digits, '.', '_' and '-'")
        since = datetime.now(UTC) - timedelta(hours=hours)
        async with pool.connection() as conn:
            rows = await repository.worker_track(conn, worker_id=worker_id, since=since, actor=claims["sub"],
                                                 role=claims["role"], reason=reason)
        return JSONResponse({"worker_id": worker_id, "since": since.isoformat(), "rows": _jsonable(rows)})

    return app
