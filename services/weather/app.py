"""Wiring of the weather streaming service: `cityops weather serve`."""

from __future__ import annotations

import asyncio


def run(port: int | None = None) -> int:
    from fastapi import FastAPI

    from services.weather.handlers import SignalMonitor
    from services.weather.settings import WeatherSettings
    from shared.service import Readiness, health_app, serve
    from shared.stream import StreamProcessor

    s = WeatherSettings()  # type: ignore[call-arg]
    readiness = Readiness("kafka")
    roster = None
    if s.city_config is not None:
        import json

        cfg = json.loads(s.city_config.read_text())
        roster = list(cfg.get("domains", {}).get("weather", {}).get("stations", {}))
    mon = SignalMonitor(roster)
    proc = StreamProcessor("weather", s.kafka_bootstrap, ["cityops.observations.weather.v1"], s.weather_group,
                           mon.handle, readiness)
    app = FastAPI()

    @app.get("/signals/active")
    async def active() -> list[dict]:
        return [{"signal": sig, "district": d, "level": lv} for (sig, d), lv in mon.board.active().items()]

    app = health_app("weather", readiness, app)
    return asyncio.run(serve("weather", app, [proc.run], port=port or s.weather_port))
