"""A leak's state in the leak lists (query API and water service) on a real database: open until its alert is resolved."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

pytestmark = pytest.mark.stack
T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


def _leak(c, leak_id: str, hours: int) -> None:
    c.execute("INSERT INTO leaks (leak_id, detected_at, pipe_id, candidates, estimated_flow_m3h, dma, kind) "
              "VALUES (%s, %s, '101', '[]', 40.0, 'dma-1', 'burst')", (leak_id, T0 + timedelta(hours=hours)))


def _alert(c, alert_id: str, leak_id: str, resolved: bool) -> None:
    c.execute(
        "INSERT INTO alerts (alert_id, domain, kind, severity, status, title_zh, title_en, message_zh, message_en,"
        " dedup_key, raised_at, evidence, resolved_at, resolved_by) VALUES (%s, 'water', 'leak', 'major', %s,"
        " 't', 't', 'm', 'm', 'water:leak:dma-1', %s, %s, %s, %s)",
        (alert_id, "resolved" if resolved else "raised", T0, json.dumps({"leak_id": leak_id}),
         T0 + timedelta(days=1) if resolved else None, "dispatcher-li" if resolved else None))


@pytest.fixture(scope="module")
def leaks_db(db_url):
    """Four leaks, all still 'open' in leaks.status as the service wrote them: one repaired (its alert resolved), one
    whose alert is open, one without an alert yet, one with a resolved and a still open alert."""
    with psycopg.connect(db_url) as c:
        for i, leak_id in enumerate(("repaired", "waiting", "no-alert", "half")):
            _leak(c, leak_id, i)
        _alert(c, "a-repaired", "repaired", True)
        _alert(c, "a-waiting", "waiting", False)
        _alert(c, "a-half-1", "half", True)
        _alert(c, "a-half-2", "half", False)
    return db_url


async def test_api_leak_list_by_status_follows_the_alerts(leaks_db):
    """GET /api/v1/water/leaks.geojson?status=open listed a repaired leak as open: it filtered on leaks.status, which
    nothing updates after the insert. It now follows the dashboards' rule: open until the leak's alert is resolved."""
    from fastapi import FastAPI
    from psycopg_pool import AsyncConnectionPool

    from shared.api import deps
    from shared.api.routers import water

    app = FastAPI()
    app.include_router(water.router)
    app.dependency_overrides[deps.OpenData.__metadata__[0].dependency] = lambda: deps.Caller("test", "open_data")
    app.state.pool = AsyncConnectionPool(leaks_db, min_size=1, max_size=2, open=False)
    await app.state.pool.open()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:

            async def listed(**params) -> dict[str, str]:
                r = await client.get("/api/v1/water/leaks.geojson", params=params)
                assert r.status_code == 200, r.text
                return {f["id"]: f["properties"]["status"] for f in r.json()["features"]}

            assert await listed(status="open") == {"waiting": "open", "no-alert": "open", "half": "open"}
            assert await listed(status="resolved") == {"repaired": "resolved"}
            assert (await listed())["repaired"] == "resolved" and len(await listed()) == 4
            assert (await client.get("/api/v1/water/leaks.geojson", params={"status": "closed"})).status_code == 422
    finally:
        await app.state.pool.close()


async def test_water_service_leak_rows_carry_the_alert_state(leaks_db):
    """The water service's own leak list (GET /leaks) showed leaks.status too: 'open' for a repaired leak."""
    from services.water import repository

    async with await psycopg.AsyncConnection.connect(leaks_db) as conn:
        rows = {r["leak_id"]: r["status"] for r in await repository.leaks(conn)}
        one = await repository.leak(conn, "repaired")
    assert rows == {"repaired": "resolved", "waiting": "open", "no-alert": "open", "half": "open"}
    assert one is not None and one["status"] == "resolved"
