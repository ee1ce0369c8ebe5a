"""The notification service with its console on a free port, for the console tests (real Kafka and PostgreSQL)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flood_alert():
    """The console tests' alert: a major flood risk in d08, with a fresh id and dedup key."""
    import secrets
    from datetime import UTC, datetime

    from schemas.alerts import Alert, GeoPoint

    return Alert(
        alert_id=f"al-{secrets.token_hex(4)}",
        domain="water",
        kind="flood_risk",
        severity="major",
        title_zh="低洼地区内涝风险",
        title_en="Flood risk in low-lying streets",
        message_zh="请派员巡查。",
        message_en="Send a patrol.",
        location=GeoPoint(lat=30.25, lon=120.16),
        district="d08",
        dedup_key=f"water:flood:{secrets.token_hex(3)}",
        raised_at=datetime.now(UTC),
    )


def settings(db_url: str, d: Path, tag: str, topics: dict[str, str], **extra):
    """NotifySettings reading the roster and routing written in `d`, on this test's own topics and group."""
    from shared.notify.settings import NotifySettings

    return NotifySettings(
        db_url=db_url,
        notify_routing=d / "routing.yaml",
        notify_roster=d / "roster.yaml",
        notify_group=f"test-notify-{tag}",
        notify_alerts_topic=topics["alerts"],
        notify_tasks_topic=topics["tasks"],
        notify_task_updates_topic=topics["updates"],
        notify_poll_s=0.2,
        **extra,
    )


async def serve(svc):
    """The console's HTTP side of `svc` on a free port: (url, server task, server)."""
    import uvicorn
    from fastapi import FastAPI

    from shared.notify import endpoints
    from shared.service import health_app

    app = endpoints.build(svc, health_app("notify", svc.readiness, FastAPI()))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return f"http://127.0.0.1:{port}", task, server
