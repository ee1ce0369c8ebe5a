"""All SQL of the water service: the leaks table (natural key leak_id, upserted so replays change nothing), and
the leak list of the service (its state by the rule shared with the query API and dashboards)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from shared.storage import queries


async def upsert_leak(conn: psycopg.AsyncConnection, *, leak_id: str, detected_at: datetime, pipe_id: str,
                      candidates: list[dict], flow_m3h: float | None, dma: str, kind: str) -> None:
    """One row per leak; a known leak that grows updates its candidates and flow."""
    await conn.execute(
        """INSERT INTO leaks (leak_id, detected_at, pipe_id, candidates, estimated_flow_m3h, dma, kind)
           VALUES (%s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (leak_id) DO UPDATE SET pipe_id = EXCLUDED.pipe_id, candidates = EXCLUDED.candidates,
               estimated_flow_m3h = EXCLUDED.estimated_flow_m3h, dma = EXCLUDED.dma""",
        (leak_id, detected_at, pipe_id, json.dumps(candidates), flow_m3h, dma, kind),
    )


_LEAKS = queries.LEAKS_WITH_STATE


async def leaks(conn: psycopg.AsyncConnection, *, status: str | None = None, dma: str | None = None, limit: int = 100,
                offset: int = 0) -> list[dict[str, Any]]:
    """Leaks newest first; `status` 'open' (its alert not yet resolved, or no alert) or 'resolved'."""
    cur = await conn.execute(
        _LEAKS + "WHERE (%(status)s::text IS NULL OR status = %(status)s) AND (%(dma)s::text IS NULL OR dma = %(dma)s) "
        "ORDER BY detected_at DESC, leak_id LIMIT %(limit)s OFFSET %(offset)s",
        {"status": status, "dma": dma, "limit": limit, "offset": offset})
    cols = [c.name for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def leak(conn: psycopg.AsyncConnection, leak_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(_LEAKS + "WHERE leak_id = %s", (leak_id,))
    row = await cur.fetchone()
    return dict(zip([c.name for c in cur.description], row, strict=True)) if row else None
