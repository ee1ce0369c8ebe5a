"""Weather: observed values and history, nowcasts with their p10/p90 band, bulletins."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from shared.api import repository
from shared.api.deps import OpenData, Paging, TimeRange
from shared.api.routers import _obs

router = APIRouter(prefix="/api/v1/weather", tags=["weather"])
# what weather stations send and the weather service nowcasts (services/weather: VARIABLES, UNITS)
Variable = Literal["temp", "dewp", "pres", "wind_speed", "wind_dir", "rain"]


@router.get("/latest", summary="Newest good value per station", responses=_obs.example(_obs.LATEST_EXAMPLE))
async def latest(
    request: Request,
    _: OpenData,
    page: Paging,
    quantity: Variable | None = None,
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.latest(request, ["weather"], quantity, district, sensor_id, page)


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
    quantity: Variable = "temp",
    bucket: _obs.Bucket = "1h",
    district: _obs.District = None,
    sensor_id: _obs.SensorId = None,
) -> dict:
    return await _obs.history(request, ["weather"], quantity, bucket, rng, district, sensor_id, page)


@router.get("/nowcasts", summary="Nowcasts valid in the range, with p10/p90")
async def nowcasts(
    request: Request,
    _: OpenData,
    page: Paging,
    rng: TimeRange,
    variable: Variable = "temp",
    station_id: _obs.SensorId = None,
    horizon_h: Annotated[int | None, Query(ge=0, le=240, examples=[1])] = None,
) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.forecasts(
            conn,
            domain="weather",
            variable=variable,
            station_id=station_id,
            start=rng.start,
            end=rng.end,
            horizon_h=horizon_h,
            limit=page.limit,
            offset=page.offset,
        )
    return page.wrap(rows)


@router.get("/bulletins", summary="Bulletins in Chinese and English")
async def bulletins(request: Request, _: OpenData, page: Paging, district: _obs.District = None) -> dict:
    async with request.app.state.pool.connection() as conn:
        rows = await repository.bulletins(conn, district=district, limit=page.limit, offset=page.offset)
    return page.wrap(rows)
