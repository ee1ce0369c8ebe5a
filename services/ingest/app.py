"""Wiring of the ingest room: `cityops ingest gateway` and `cityops ingest sink`."""

from __future__ import annotations

import asyncio

from services.ingest.settings import IngestSettings
from shared.service import Readiness, health_app, serve


def run_gateway(port: int | None = None) -> int:
    from services.ingest.handlers import Gateway

    s = IngestSettings()  # type: ignore[call-arg]
    readiness = Readiness("db", "kafka", "mqtt")
    gw = Gateway(s, readiness)
    app = health_app("ingest-gateway", readiness)
    return asyncio.run(serve("ingest-gateway", app, [gw.run], port=port or s.ingest_port))


def run_sink(port: int | None = None) -> int:
    from services.ingest.sink import ObservationSink

    s = IngestSettings()  # type: ignore[call-arg]
    readiness = Readiness("db", "kafka")
    sink = ObservationSink(s, readiness)
    app = health_app("ingest-sink", readiness)
    return asyncio.run(serve("ingest-sink", app, [sink.run], port=port or s.sink_port))
