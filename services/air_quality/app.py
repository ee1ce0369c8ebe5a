"""Wiring of the air-quality service: one stream consumer (air + weather observations, nowcasts), HTTP."""

from __future__ import annotations

import asyncio

from services.air_quality.settings import AirSettings
from shared.service import Readiness, health_app, serve


def build(s: AirSettings, readiness: Readiness, *, config: dict | None = None):
    """The service object, its workers and the HTTP app (the DB pool opens in the worker)."""
    from psycopg_pool import AsyncConnectionPool

    from services.air_quality import endpoints
    from services.air_quality.handlers import TOPICS, AirService
    from shared.stream import StreamProcessor

    pool = AsyncConnectionPool(s.db_url, min_size=1, max_size=4, open=False)
    svc = AirService(s, pool, config=config)
    proc = StreamProcessor("air-quality", s.kafka_bootstrap, TOPICS, f"{s.air_group_prefix}-stream", svc.handle,
                           readiness, max_records=2000, tick=svc.heavy, tick_s=s.air_heavy_every_s,
                           pending=svc.pending_work)

    async def stream(stop: asyncio.Event) -> None:
        await pool.open(wait=True, timeout=60)
        await svc.restore_open_alerts()
        readiness.set("db")
        try:
            await proc.run(stop)
        finally:
            await svc.drain()
            await pool.close()

    app = health_app("air-quality", readiness)
    endpoints.mount(app, s, pool, svc)
    return svc, app, [stream]


def run(port: int | None = None) -> int:
    s = AirSettings()  # type: ignore[call-arg]
    readiness = Readiness("db", "kafka")
    _, app, workers = build(s, readiness)
    return asyncio.run(serve("air-quality", app, workers, port=port or s.air_port))
