"""Wiring of the notification service: `cityops notify serve`."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI

from shared.notify.settings import NotifySettings
from shared.service import Readiness, health_app, serve

if TYPE_CHECKING:
    from shared.notify.handlers import NotifyService

logger = logging.getLogger("cityops.notify")


def provision_mqtt_users(roster) -> list[str]:
    """Give every field worker of the roster an MQTT login that reads only `field/<their id>/#`."""
    from shared.stack.config import StackConfig
    from shared.stack.mosquitto import Mosquitto

    people = [p.id for p in roster.people if "field_staff" in p.roles]
    Mosquitto(StackConfig.from_env()).apply(people=people)
    return people


def build_app(settings: NotifySettings | None = None) -> tuple[FastAPI, NotifyService]:
    """(FastAPI app, NotifyService) — the service's workers are `service.run(stop)`."""
    from shared.notify import endpoints
    from shared.notify.handlers import NotifyService

    s = settings or NotifySettings()  # type: ignore[call-arg]
    readiness = Readiness("db", "kafka", "channels")
    svc = NotifyService(s, readiness)
    app = health_app("notify", readiness, FastAPI(title="CityOps notify", version="1"))
    endpoints.build(svc, app)
    return app, svc


def run(port: int | None = None, *, provision: bool = True) -> int:
    s = NotifySettings()  # type: ignore[call-arg]
    app, svc = build_app(s)
    if provision and "mqtt" in svc.channels:
        provision_mqtt_users(svc.roster)
    return asyncio.run(serve("notify", app, [svc.run], port=port or s.notify_port, host=s.notify_host))
