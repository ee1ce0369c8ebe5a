"""Wiring of the water service: one stream consumer (leaks and flood risk), the leak-free history, HTTP."""

from __future__ import annotations

import asyncio

from services.water.settings import WaterSettings
from shared.service import Readiness, health_app, serve


def build(s: WaterSettings, readiness: Readiness, *, config: dict | None = None):
    """The service object, its workers and the HTTP app (the DB pool opens in the first worker)."""
    from psycopg_pool import AsyncConnectionPool

    from services.water import endpoints
    from services.water.handlers import TOPICS, WaterService
    from shared.stream import StreamProcessor

    pool = AsyncConnectionPool(s.db_url, min_size=1, max_size=4, open=False)
    svc = WaterService(s, pool, config=config)
    proc = StreamProcessor("water", s.kafka_bootstrap, TOPICS, f"{s.water_group_prefix}-stream", svc.handle,
                           readiness, max_records=2000, tick=svc.tick, tick_s=5.0,
                           pending=svc.pending_work)

    async def stream(stop: asyncio.Event) -> None:
        await pool.open(wait=True, timeout=60)
        await svc.restore_open_alerts()
        readiness.set("db")
        history = asyncio.create_task(svc.pretrain(), name="water-history")
        try:
            await proc.run(stop)
        finally:
            history.cancel()
            await pool.close()

    app = health_app("water", readiness)
    endpoints.mount(app, s, pool, svc)
    return svc, app, [stream]


def run(port: int | None = None) -> int:
    from pydantic import ValidationError

    try:
        s = WaterSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        bad = ", ".join("CITYOPS_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(f"error: missing or bad settings {bad}: run `cityops stack up` first, or export them") from None
    readiness = Readiness("db", "kafka")
    _, app, workers = build(s, readiness)
    return asyncio.run(serve("water", app, workers, port=port or s.water_port))
