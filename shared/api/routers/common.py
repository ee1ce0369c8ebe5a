"""Login, the sensor registry (JSON and GeoJSON) and alerts across domains."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from shared.api import repository
from shared.api.deps import RANK, OpenData, Paging, TimeRange
from shared.api.problems import PROBLEM_SCHEMA, ApiError
from shared.api.routers import _obs
from shared.notify.domain.auth import LoginRefused, sign_token

router = APIRouter(prefix="/api/v1", tags=["common"])
Domain = Literal["air", "water", "weather", "equipment", "safety", "emergency"]
PUBLIC_DOMAINS = ["air", "water", "weather", "equipment", "safety"]


class TokenIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "opendata-demo", "password": "demo-opendata-demo"}]},
    )
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class TokenOut(BaseModel):
    token: str
    role: str
    expires_in_s: int


@router.post(
    "/token",
    summary="Log in: a bearer token for the other endpoints",
    response_model=TokenOut,
    responses={401: PROBLEM_SCHEMA, 429: PROBLEM_SCHEMA},
)
async def token(body: TokenIn, request: Request) -> TokenOut:
    acc = request.app.state.accounts.get(body.username)
    try:
        ok = await request.app.state.login_guard.verify(
            body.username,
            body.password,
            acc.password_hash if acc else None,
            request.client.host if request.client else None,
        )
    except LoginRefused as exc:
        raise ApiError(
            429, "too_many_failures", exc.message, headers={"Retry-After": str(exc.retry_after_s)}
        ) from None
    if acc is None or not ok:
        raise ApiError(
            401,
            "bad_credentials",
            "unknown user or wrong password: check both, or ask the CityOps administrator for an account",
        )
    role = max(acc.roles, key=lambda r: RANK[r])
    ttl = 12 * 3600
    return TokenOut(
        token=sign_token(request.app.state.secret, sub=acc.id, role=role, ttl_s=ttl),
        role=role,
        expires_in_s=ttl,
    )


@router.get("/sensors", summary="Sensors (personal wearables are never listed)")
async def sensors(
    request: Request,
    _: OpenData,
    page: Paging,
    domain: Domain | None = None,
    district: _obs.District = None,
    kind: Annotated[str | None, Query(pattern=_obs.ID, examples=["reference_station"])] = None,
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.sensors(
            conn,
            domains=[domain] if domain else None,
            district=district,
            kind=kind,
            limit=page.limit,
            offset=page.offset,
        )
    return page.wrap(rows)


@router.get(
    "/sensors.geojson",
    summary="Sensors as GeoJSON points",
    responses={
        200: {
            "content": {
                "application/geo+json": {
                    "example": {
                        "type": "FeatureCollection",
                        "features": [
                            {
                                "type": "Feature",
                                "id": "air-ref-01",
                                "geometry": {"type": "Point", "coordinates": [120.205, 30.166]},
                                "properties": {
                                    "domain": "air",
                                    "kind": "reference_station",
                                    "district": "d09",
                                    "quantities": ["pm25", "pm10"],
                                },
                            }
                        ],
                    }
                }
            }
        }
    },
)
async def sensors_geojson(
    request: Request, _: OpenData, page: Paging, domain: Domain | None = None, district: _obs.District = None
) -> JSONResponse:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.sensors(
            conn,
            domains=[domain] if domain else None,
            district=district,
            kind=None,
            limit=page.limit,
            offset=page.offset,
        )
    feats = [
        {
            "type": "Feature",
            "id": r["sensor_id"],
            "geometry": {"type": "Point", "coordinates": [r["lon"], r["lat"]]},
            "properties": {
                "domain": r["domain"],
                "kind": r["kind"],
                "district": r["district"],
                "quantities": sorted(r["quantities"]),
            },
        }
        for r in rows
    ]
    return JSONResponse({"type": "FeatureCollection", "features": feats}, media_type="application/geo+json")


@router.get("/alerts", summary="Alerts in both languages (no evidence, no personal data)")
async def alerts(
    request: Request,
    _: OpenData,
    page: Paging,
    rng: TimeRange,
    domain: Domain | None = None,
    severity: Literal["info", "minor", "major", "critical"] | None = None,
    district: _obs.District = None,
    open_only: bool = False,
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.alerts(
            conn,
            domain=domain,
            severity=severity,
            district=district,
            start=rng.start,
            end=rng.end,
            open_only=open_only,
            limit=page.limit,
            offset=page.offset,
        )
    return page.wrap(rows)
