"""HTTP routes of the weather service: active signals, sensor faults, nowcasts (JSON), bulletins (HTML, PNG)."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from services.weather import repository

_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,80}$")


def _iso(x):
    return x.isoformat() if isinstance(x, datetime) else x


def mount(app: FastAPI, pool, svc) -> FastAPI:
    @app.get("/signals/active", tags=["weather"], summary="Warning signals in force per district")
    async def active() -> list[dict]:
        return [{"signal": sig, "district": d, "level": lv} for (sig, d), lv in svc.monitor.board.active().items()]

    @app.get("/qc/faults", tags=["weather"], summary="Sensors whose values are failing QC now")
    async def faults() -> list[dict]:
        return svc.active_faults()

    @app.get("/nowcasts", tags=["weather"],
             summary="The newest 1-6 h nowcast per station and variable, the model chosen per horizon, "
                     "and the candidates' rolling skill (RMSE)")
    async def nowcasts(station_id: Annotated[str | None, Query(max_length=80)] = None,
                       variable: Annotated[str | None, Query(max_length=20)] = None) -> JSONResponse:
        async with pool.connection() as conn:
            rows = await repository.latest_nowcasts(conn, station_id=station_id, variable=variable)
        out: dict[tuple[str, str], dict] = {}
        for r in rows:
            key = (r["station_id"], r["variable"])
            item = out.setdefault(key, {"station_id": key[0], "variable": key[1], "issued_at": _iso(r["issued_at"]),
                                        "horizons": [],
                                        "skill_rmse": svc.nowcast_skill.get(key, {}).get("skill_rmse")})
            item["horizons"].append({"horizon_h": r["horizon_h"], "valid_at": _iso(r["valid_at"]), "value": r["value"],
                                     "p10": r["p10"], "p90": r["p90"], "model": r["model"]})
        return JSONResponse(list(out.values()))

    @app.get("/bulletins/latest", tags=["weather"], summary="A district's newest bulletin as an HTML page")
    async def latest(district: Annotated[str, Query(min_length=1, max_length=80)]) -> HTMLResponse:
        async with pool.connection() as conn:
            row = await repository.latest_bulletin(conn, district)
        if row is None:
            raise HTTPException(404, f"no bulletin for district {district!r} yet")
        return HTMLResponse(row["html"])

    @app.get("/bulletins/{bulletin_id}", tags=["weather"], summary="One bulletin as an HTML page")
    async def one(bulletin_id: str) -> HTMLResponse:
        row = await _row(bulletin_id)
        return HTMLResponse(row["html"])

    @app.get("/bulletins/{bulletin_id}/chart.png", tags=["weather"], summary="One bulletin's chart")
    async def chart(bulletin_id: str) -> Response:
        row = await _row(bulletin_id)
        return Response(base64.b64decode(row["chart_png"] or ""), media_type="image/png")

    async def _row(bulletin_id: str) -> dict:
        if not _ID.match(bulletin_id):
            raise HTTPException(422, "bulletin id may only hold letters, digits, '.', ':', '_' and '-'")
        async with pool.connection() as conn:
            row = await repository.bulletin(conn, bulletin_id)
        if row is None:
            raise HTTPException(404, f"no bulletin {bulletin_id!r}: find one with GET /bulletins/latest?district=…")
        return row

    return app
