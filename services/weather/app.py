"""Wiring of the weather streaming service: `cityops weather serve`."""

from __future__ import annotations

import asyncio

from services.weather.settings import WeatherSettings
from shared.service import Readiness, health_app, serve


def build(s: WeatherSettings, readiness: Readiness, *, config: dict | None = None):
    """The service object, its worker and the HTTP app (the DB pool opens in the worker)."""
    from psycopg_pool import AsyncConnectionPool

    from schemas.topics import OBSERVATION_TOPIC
    from services.weather import endpoints
    from services.weather.handlers import StreamOptions, WeatherService
    from shared.stream import StreamProcessor

    pool = AsyncConnectionPool(s.db_url, min_size=1, max_size=3, open=False)
    svc = WeatherService(StreamOptions.from_settings(s), pool, config=config if config is not None
                         else s.load_city_config())
    proc = StreamProcessor("weather", s.kafka_bootstrap, [OBSERVATION_TOPIC["weather"]], s.weather_group,
                           svc.handle, readiness)

    async def stream(stop: asyncio.Event) -> None:
        await pool.open(wait=True, timeout=60)
        await svc.restore_open_alerts()
        readiness.set("db")
        try:
            await proc.run(stop)
        finally:
            await pool.close()

    app = health_app("weather", readiness)
    endpoints.mount(app, pool, svc)
    return svc, app, [stream]


def run(port: int | None = None) -> int:
    from pydantic import ValidationError

    try:
        s = WeatherSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        bad = ", ".join("CITYOPS_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(f"error: missing or bad settings {bad}: run `cityops stack up` first, or export them") from None
    readiness = Readiness("db", "kafka")
    _, app, workers = build(s, readiness)
    return asyncio.run(serve("weather", app, workers, port=port or s.weather_port))
