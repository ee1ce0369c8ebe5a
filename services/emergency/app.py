"""Wiring of the emergency service: three stream consumers, the report drawer, retention, HTTP."""

from __future__ import annotations

import asyncio
import logging

from services.emergency.settings import EmergencySettings
from shared.service import Readiness, health_app, serve

logger = logging.getLogger("cityops.emergency")


def build(s: EmergencySettings, readiness: Readiness, *, config: dict | None = None):
    """The service object, its workers and the HTTP app (the DB pool opens in the first worker)."""
    from psycopg_pool import AsyncConnectionPool

    from services.emergency import endpoints, repository
    from services.emergency.handlers import EmergencyService, processors
    from shared import kafka

    pool = AsyncConnectionPool(s.db_url, min_size=1, max_size=4, open=False)
    svc = EmergencyService(s, pool, config=config)
    consumers = processors(svc, s.kafka_bootstrap, s.emergency_group_prefix, readiness)

    async def db_and_reports(stop: asyncio.Event) -> None:
        await pool.open(wait=True, timeout=60)
        await svc.restore_open_alerts()  # before any stream consumer starts (they wait for "db")
        readiness.set("db")
        producer = kafka.producer(s.kafka_bootstrap)
        await producer.start()
        try:
            await svc.reporter(stop, producer)
        finally:
            await producer.stop()
            await pool.close()

    async def streams(stop: asyncio.Event) -> None:
        while not readiness.state.get("db"):
            await asyncio.sleep(0.1)
        await asyncio.gather(*(supervise(c, stop) for c in consumers))

    async def retention(stop: asyncio.Event) -> None:
        while not stop.is_set():
            deleted = await asyncio.to_thread(repository.enforce_retention, s.db_url, s.emergency_retention_days)
            logger.info("retention enforced", extra={"fields": {"deleted": deleted}})
            try:
                await asyncio.wait_for(stop.wait(), s.emergency_retention_interval_s)
            except TimeoutError:
                pass

    app = health_app("emergency", readiness)
    endpoints.mount(app, s, pool, svc)
    return svc, app, [db_and_reports, streams, retention]


async def supervise(consumer, stop: asyncio.Event, backoff_s: float = 1.0) -> None:
    """Run one stream consumer until `stop`; when Kafka fails it (a commit refused because the group rebalanced
    while a loaded machine starved the heartbeats, a broker restart), log it and rejoin. The group resumes at
    its last commit and the handlers skip what they already handled, so nothing is lost or doubled; anything
    that is not a Kafka error is a bug and still stops the service."""
    from aiokafka.errors import KafkaError

    while not stop.is_set():
        try:
            await consumer.run(stop)
            return
        except KafkaError as exc:
            logger.error("stream consumer failed; rejoining its group", extra={"fields": {
                "consumer": consumer.name, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}})
            try:
                await asyncio.wait_for(stop.wait(), backoff_s)
            except TimeoutError:
                pass


def run(port: int | None = None) -> int:
    from pydantic import ValidationError

    try:
        s = EmergencySettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        bad = ", ".join("CITYOPS_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(f"error: missing or bad settings {bad}: run `cityops stack up` first, or export them") from None
    from shared.notify.domain.config import ConfigError

    readiness = Readiness("db", "kafka")
    try:
        _, app, workers = build(s, readiness)
    except ConfigError as exc:  # the notification roster refused (e.g. the demo accounts): one line, what to do
        raise SystemExit(f"error: {exc}") from None
    return asyncio.run(serve("emergency", app, workers, port=port or s.emergency_port))
