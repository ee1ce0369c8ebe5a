"""Running a CityOps stream service: workers plus `/healthz`, `/readyz` and `/metrics` over HTTP.

Every service is the same shape: some long-running async workers (Kafka or MQTT loops) and a
small FastAPI app. `run()` starts both on one event loop, stops them on SIGTERM/SIGINT and
exits non-zero if a worker dies, so an orchestrator restarts the process (nothing is acked
before it is safely stored, so a restart loses nothing).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.observability import setup_logging

logger = logging.getLogger("cityops.service")


class Readiness:
    """Workers set what they need (e.g. 'kafka', 'mqtt', 'db'); ready when all are true."""

    def __init__(self, *needs: str):
        self.state = dict.fromkeys(needs, False)

    def set(self, name: str, ok: bool = True) -> None:
        self.state[name] = ok

    @property
    def ready(self) -> bool:
        return all(self.state.values())


def health_app(name: str, readiness: Readiness, app: FastAPI | None = None) -> FastAPI:
    app = app or FastAPI(title=f"CityOps {name}")

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process is running")
    async def healthz() -> dict:
        return {"status": "ok", "service": name}

    @app.get("/readyz", tags=["operations"], summary="Readiness: connected to everything it needs")
    async def readyz(response: Response) -> dict:
        if not readiness.ready:
            response.status_code = 503
        return {"ready": readiness.ready, "needs": readiness.state}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def serve(
    name: str,
    app: FastAPI,
    workers: list[Callable[[asyncio.Event], Awaitable[None]]],
    *,
    port: int,
    host: str | None = None,
) -> int:
    import os

    import uvicorn

    # loopback on a laptop; a container sets CITYOPS_HTTP_HOST=0.0.0.0 so probes and Services reach it
    host = host or os.environ.get("CITYOPS_HTTP_HOST", "127.0.0.1")
    setup_logging()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    tasks = [asyncio.create_task(w(stop), name=getattr(w, "__name__", "worker")) for w in workers]
    http = asyncio.create_task(server.serve(), name="http")
    logger.info("service started", extra={"fields": {"service": name, "port": port}})
    done, _ = await asyncio.wait([*tasks, http, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    for t in done:
        if t in tasks and t.exception() is not None:
            logger.error("worker failed", exc_info=t.exception(), extra={"fields": {"service": name}})
            rc = 1
    stop.set()
    server.should_exit = True
    await asyncio.gather(*tasks, http, return_exceptions=True)
    logger.info("service stopped", extra={"fields": {"service": name, "rc": rc}})
    return rc
