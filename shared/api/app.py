"""The query API: wiring, lifespan (database pool, TimescaleDB detection), problem details, guards."""

from __future__ import annotations

import logging
import secrets
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from shared.api import problems, repository
from shared.api.deps import RateLimiter, load_accounts
from shared.api.routers import air, common, emergency, water, weather
from shared.api.settings import ApiSettings
from shared.notify.domain.auth import LoginGuard
from shared.service import Readiness, health_app

logger = logging.getLogger("cityops.api")

DESCRIPTION = """Read access to CityOps data for dashboards and other city systems.

* Log in with `POST /api/v1/token`, then send `Authorization: Bearer <token>`. Accounts and roles are
  the notification service's (viewer, dispatcher, admin) plus read-only `open_data` consumers.
  Five failed logins for an account (twenty from one address) within 15 minutes lock its logins for the
  rest of that window: `429` with `Retry-After`.
* History is aggregated in buckets (`time_bucket` under TimescaleDB, `date_bin` otherwise).
* Lists page with `limit` and `offset`; follow `next_offset` until it is null.
* Errors are RFC 7807 problem details (`application/problem+json`) that say what to do.
* Personal data (wearables) only for admins, with a stated reason; every read is audited.
"""


def build(settings: ApiSettings) -> FastAPI:
    readiness = Readiness("db")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        from psycopg_pool import AsyncConnectionPool

        pool = AsyncConnectionPool(
            settings.db_url,
            min_size=1,
            max_size=settings.api_pool_max,
            open=False,
            kwargs={"autocommit": True},
        )
        await pool.open(wait=True, timeout=60)
        async with pool.connection() as conn:
            app.state.timescale = await repository.detect_timescale(conn)
        app.state.pool = pool
        readiness.set("db")
        logger.info("api ready", extra={"fields": {"timescale": app.state.timescale}})
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="CityOps query API", version="1.0.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.accounts = load_accounts(
        settings.api_roster, settings.api_consumers, allow_demo=settings.allow_demo_accounts
    )
    app.state.secret = (
        settings.api_session_secret or settings.notify_session_secret or secrets.token_urlsafe(32)
    )
    app.state.limiter = RateLimiter(settings.api_rate_per_min)
    # logins: failures counted per account and address, unknown users cost the same scrypt
    app.state.login_guard = LoginGuard()
    problems.install(app)

    @app.middleware("http")
    async def reject_nul(request: Request, call_next):
        # PostgreSQL text cannot hold NUL: say so instead of failing in the driver
        if "%00" in request.url.query or "%00" in request.url.path or "\x00" in request.url.path:
            return problems.problem(
                request, 400, "nul_character", "remove the NUL (%00) character from the URL"
            )
        return await call_next(request)

    for r in (common.router, air.router, water.router, weather.router, emergency.router):
        app.include_router(r)
    return health_app("api", readiness, app)
