"""All SQL of the notification service.

Writes that belong to one consumed Kafka batch happen in one transaction the caller opens;
the offsets are committed only after it. Queue and timer rows are claimed with
`FOR UPDATE SKIP LOCKED`, so two service instances never send the same delivery at once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

DELIVERY_COLUMNS = (
    "delivery_id",
    "idempotency_key",
    "subject_kind",
    "subject_id",
    "recipient",
    "channel",
    "language",
    "tier",
    "round",
    "status",
    "next_attempt_at",
    "address",
    "severity",
    "group_key",
    "message",
    "source_event_id",
    "hold_reason",
    "created_at",
    "error",
)
ALERT_COLUMNS = (
    "alert_id",
    "domain",
    "kind",
    "severity",
    "level",
    "status",
    "title_zh",
    "title_en",
    "message_zh",
    "message_en",
    "lat",
    "lon",
    "district",
    "dedup_key",
    "raised_at",
    "evidence",
    "repeat_count",
    "last_seen_at",
    "rule",
    "updated_at",
)


# inbox -----------------------------------------------------------------------------------------
async def claim_events(cur: psycopg.AsyncCursor, topic: str, event_ids: list[str]) -> set[str]:
    """The event ids never seen before (and now recorded): a redelivered Kafka record is skipped."""
    if not event_ids:
        return set()
    await cur.execute(
        "INSERT INTO notify_inbox (event_id, topic) SELECT e, %s FROM unnest(%s::text[]) AS e "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        (topic, event_ids),
    )
    return {r[0] for r in await cur.fetchall()}


# alerts ----------------------------------------------------------------------------------------
async def open_alerts_by_dedup(cur: psycopg.AsyncCursor, keys: list[str]) -> dict[str, dict]:
    """The newest unresolved alert of each dedup key."""
    if not keys:
        return {}
    await cur.execute(
        "SELECT DISTINCT ON (dedup_key) alert_id, dedup_key, raised_at, coalesce(last_seen_at, raised_at) AS seen,"
        " repeat_count, status, severity, level FROM alerts WHERE dedup_key = ANY(%s) AND resolved_at IS NULL "
        "ORDER BY dedup_key, raised_at DESC",
        (keys,),
    )
    cols = [d.name for d in cur.description or []]
    return {r[1]: dict(zip(cols, r, strict=True)) for r in await cur.fetchall()}


async def insert_alerts(cur: psycopg.AsyncCursor, rows: list[dict]) -> None:
    if not rows:
        return
    cols = ", ".join(ALERT_COLUMNS)
    await cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS alerts_stage (LIKE alerts INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )
    async with cur.copy(f"COPY alerts_stage ({cols}) FROM STDIN") as copy:
        for r in rows:
            await copy.write_row(
                tuple(
                    json.dumps(r[c], ensure_ascii=False) if c == "evidence" else r[c] for c in ALERT_COLUMNS
                )
            )
    await cur.execute(
        f"INSERT INTO alerts ({cols}) SELECT {cols} FROM alerts_stage ON CONFLICT (alert_id) DO NOTHING"
    )
    await cur.execute("DELETE FROM alerts_stage")


async def count_repeats(cur: psycopg.AsyncCursor, repeats: list[tuple[str, int, datetime]]) -> None:
    """(alert_id, extra repeats, last seen) — the repeats are counted on the one alert."""
    if repeats:
        await cur.executemany(
            "UPDATE alerts SET repeat_count = repeat_count + %s, last_seen_at = greatest(last_seen_at, %s),"
            " updated_at = now() WHERE alert_id = %s",
            [(n, seen, aid) for aid, n, seen in repeats],
        )


async def refresh_alerts(cur: psycopg.AsyncCursor, updates: list[tuple[str, Any]]) -> None:
    """(stored alert_id, a newer "updated" Alert of the same dedup key): its words and evidence replace the
    stored ones; severity, routing and escalation stay as they were."""
    if updates:
        await cur.executemany(
            "UPDATE alerts SET evidence = %s, title_zh = %s, title_en = %s, message_zh = %s, message_en = %s,"
            " updated_at = now() WHERE alert_id = %s",
            [(Jsonb(a.evidence or {}), a.title_zh, a.title_en, a.message_zh, a.message_en, aid) for aid, a in updates],
        )


async def alerts_by_id(cur: psycopg.AsyncCursor, alert_ids: list[str]) -> dict[str, dict]:
    if not alert_ids:
        return {}
    await cur.execute("SELECT * FROM alerts WHERE alert_id = ANY(%s)", (alert_ids,))
    cols = [d.name for d in cur.description or []]
    return {r[0]: dict(zip(cols, r, strict=True)) for r in await cur.fetchall()}


async def upgrade_alerts(cur: psycopg.AsyncCursor, updates: list[tuple[str, Any]]) -> None:
    """(stored alert_id, a newer "updated" Alert that is more severe): severity, level, words and evidence
    become the new ones (the notifications and the escalation restart with them, see handlers)."""
    if updates:
        await cur.executemany(
            "UPDATE alerts SET severity = %s, level = %s, evidence = %s, title_zh = %s, title_en = %s,"
            " message_zh = %s, message_en = %s, last_seen_at = greatest(last_seen_at, %s), status = 'open',"
            " acknowledged_at = NULL, acknowledged_by = NULL, updated_at = now() WHERE alert_id = %s",
            [(a.severity, a.level, Jsonb(a.evidence or {}), a.title_zh, a.title_en, a.message_zh, a.message_en,
              a.raised_at, aid) for aid, a in updates],
        )


async def restart_escalations(cur: psycopg.AsyncCursor, rows: list[tuple[str, str, datetime | None]]) -> None:
    """An upgraded alert's escalation starts over under the rule of its new severity (even if the milder
    version was acknowledged: the worse condition is news)."""
    if rows:
        await cur.executemany(
            "INSERT INTO notify_escalations (alert_id, rule, tier, round, state, next_due_at) "
            "VALUES (%s, %s, 0, 0, CASE WHEN %s::timestamptz IS NULL THEN 'done' ELSE 'active' END, %s) "
            "ON CONFLICT (alert_id) DO UPDATE SET rule = EXCLUDED.rule, tier = 0, round = 0, state = EXCLUDED.state,"
            " next_due_at = EXCLUDED.next_due_at, updated_at = now()",
            [(a, r, d, d) for a, r, d in rows],
        )


async def clear_alerts(cur: psycopg.AsyncCursor, dedup_keys: list[str], by: str) -> list[str]:
    """The source says the condition is over: resolve the open alerts of these keys, stop escalating."""
    if not dedup_keys:
        return []
    await cur.execute(
        "UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = %s, updated_at = now() "
        "WHERE dedup_key = ANY(%s) AND resolved_at IS NULL RETURNING alert_id",
        (by, dedup_keys),
    )
    ids = [r[0] for r in await cur.fetchall()]
    if ids:
        await cur.execute(
            "UPDATE notify_escalations SET state = 'resolved', updated_at = now() WHERE alert_id = ANY(%s)",
            (ids,),
        )
    return ids


async def start_escalations(cur: psycopg.AsyncCursor, rows: list[tuple[str, str, datetime | None]]) -> None:
    if rows:
        await cur.executemany(
            "INSERT INTO notify_escalations (alert_id, rule, tier, round, state, next_due_at) "
            "VALUES (%s, %s, 0, 0, CASE WHEN %s::timestamptz IS NULL THEN 'done' ELSE 'active' END, %s) "
            "ON CONFLICT (alert_id) DO NOTHING",
            [(a, r, d, d) for a, r, d in rows],
        )


async def due_escalations(cur: psycopg.AsyncCursor, limit: int = 200) -> list[dict]:
    """Escalations whose time has come, locked for this transaction, with their alert."""
    await cur.execute(
        # the escalation's columns last: alerts has a `rule` of its own (the first version's), and the dict keeps
        # the last of two same-named columns; an upgraded alert escalates under the rule stored with its escalation
        "SELECT a.*, e.alert_id, e.rule, e.tier, e.round FROM notify_escalations e JOIN alerts a USING (alert_id) "
        "WHERE e.state = 'active' AND e.next_due_at <= now() ORDER BY e.next_due_at LIMIT %s "
        "FOR UPDATE OF e SKIP LOCKED",
        (limit,),
    )
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, r, strict=False)) for r in await cur.fetchall()]


async def advance_escalation(
    cur: psycopg.AsyncCursor, alert_id: str, tier: int, round_: int, next_due_at: datetime | None
) -> None:
    await cur.execute(
        "UPDATE notify_escalations SET tier = %s, round = %s, next_due_at = %s,"
        " state = CASE WHEN %s::timestamptz IS NULL THEN 'done' ELSE 'active' END, updated_at = now() "
        "WHERE alert_id = %s",
        (tier, round_, next_due_at, next_due_at, alert_id),
    )


async def get_alert(conn: psycopg.AsyncConnection, alert_id: str) -> dict | None:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT a.*, e.tier AS escalation_tier, e.round AS escalation_round, e.state AS "
            "escalation_state, e.next_due_at AS escalation_due_at FROM alerts a "
            "LEFT JOIN notify_escalations e USING (alert_id) WHERE a.alert_id = %s",
            (alert_id,),
        )
        return await cur.fetchone()


async def list_alerts(
    conn: psycopg.AsyncConnection, *, since: datetime | None = None, limit: int = 200
) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT a.alert_id, a.domain, a.kind, a.severity, a.level, a.status, a.title_zh, a.title_en,"
            " a.message_zh, a.message_en, a.lat, a.lon, a.district, a.dedup_key, a.raised_at, a.repeat_count,"
            " a.last_seen_at, a.acknowledged_at, a.acknowledged_by, a.resolved_at, a.resolved_by, a.updated_at,"
            " e.tier AS escalation_tier, e.round AS escalation_round, e.state AS escalation_state "
            "FROM alerts a LEFT JOIN notify_escalations e USING (alert_id) "
            "WHERE (%s::timestamptz IS NULL OR a.updated_at > %s) ORDER BY a.updated_at DESC LIMIT %s",
            (since, since, limit),
        )
        return await cur.fetchall()


async def acknowledge_alert(
    conn: psycopg.AsyncConnection, alert_id: str, actor: str, role: str
) -> dict | None:
    """Acknowledge: stop escalating. Returns the alert, or None if there is no such alert."""
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE alerts SET status = CASE WHEN resolved_at IS NULL THEN 'acknowledged' ELSE status END,"
            " acknowledged_at = coalesce(acknowledged_at, now()), acknowledged_by = coalesce(acknowledged_by, %s),"
            " updated_at = now() WHERE alert_id = %s RETURNING alert_id",
            (actor, alert_id),
        )
        if cur.rowcount == 0:
            return None
        await conn.execute(
            "UPDATE notify_escalations SET state = 'acknowledged', updated_at = now() "
            "WHERE alert_id = %s AND state = 'active'",
            (alert_id,),
        )
        await audit(conn, actor, role, "acknowledge", f"alert:{alert_id}", {})
    return await get_alert(conn, alert_id)


async def resolve_alert(
    conn: psycopg.AsyncConnection, alert_id: str, actor: str, role: str, note: str | None
) -> dict | None:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE alerts SET status = 'resolved', resolved_at = coalesce(resolved_at, now()),"
            " resolved_by = coalesce(resolved_by, %s), acknowledged_at = coalesce(acknowledged_at, now()),"
            " acknowledged_by = coalesce(acknowledged_by, %s), updated_at = now() WHERE alert_id = %s "
            "RETURNING alert_id",
            (actor, actor, alert_id),
        )
        if cur.rowcount == 0:
            return None
        await conn.execute(
            "UPDATE notify_escalations SET state = 'resolved', updated_at = now() "
            "WHERE alert_id = %s AND state = 'active'",
            (alert_id,),
        )
        await audit(conn, actor, role, "resolve", f"alert:{alert_id}", {"note": note})
    return await get_alert(conn, alert_id)


async def audit(
    conn: psycopg.AsyncConnection | psycopg.AsyncCursor,
    actor: str,
    role: str,
    action: str,
    subject: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, role, action, subject, detail) VALUES (%s, %s, %s, %s, %s)",
        (actor, role, action, subject, Jsonb(detail)),
    )


# deliveries ------------------------------------------------------------------------------------
async def recent_sends(
    cur: psycopg.AsyncCursor, recipients: list[str], window_s: float
) -> dict[tuple[str, str], int]:
    """Deliveries not held back, per (recipient, channel), created in the last `window_s` seconds."""
    if not recipients:
        return {}
    await cur.execute(
        "SELECT recipient, channel, count(*) FROM deliveries WHERE recipient = ANY(%s) AND hold_reason IS NULL"
        " AND created_at > now() - make_interval(secs => %s) GROUP BY recipient, channel",
        (recipients, window_s),
    )
    return {(r[0], r[1]): r[2] for r in await cur.fetchall()}


async def recent_groups(
    cur: psycopg.AsyncCursor, recipients: list[str], window_s: float
) -> dict[tuple, datetime]:
    """First delivery per (recipient, channel, group) inside the grouping window: later ones wait for the digest."""
    if not recipients or window_s <= 0:
        return {}
    await cur.execute(
        "SELECT recipient, channel, group_key, min(created_at) FROM deliveries WHERE recipient = ANY(%s)"
        " AND group_key IS NOT NULL AND hold_reason IS NULL AND created_at > now() - make_interval(secs => %s)"
        " GROUP BY recipient, channel, group_key",
        (recipients, window_s),
    )
    return {(r[0], r[1], r[2]): r[3] for r in await cur.fetchall()}


async def insert_deliveries(cur: psycopg.AsyncCursor, rows: list[dict]) -> set[str]:
    """Insert planned deliveries; the UNIQUE idempotency key drops any already planned. Returns the idempotency
    keys inserted: only those are new sends (a row the key dropped was planned, and sent, before).

    COPY into a staging table, then one INSERT … ON CONFLICT: array parameters or executemany cost
    several times more CPU at benchmark rates (bench/notify)."""
    if not rows:
        return set()
    cols = ", ".join(DELIVERY_COLUMNS)
    await cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS deliveries_stage (LIKE deliveries INCLUDING DEFAULTS) "
        "ON COMMIT DELETE ROWS"
    )
    async with cur.copy(f"COPY deliveries_stage ({cols}) FROM STDIN") as copy:
        for r in rows:
            await copy.write_row(
                tuple(
                    json.dumps(r[c], ensure_ascii=False) if c == "message" else r[c] for c in DELIVERY_COLUMNS
                )
            )
    await cur.execute(
        f"INSERT INTO deliveries ({cols}) SELECT {cols} FROM deliveries_stage "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
    )
    inserted = {r[0] for r in await cur.fetchall()}
    await cur.execute("DELETE FROM deliveries_stage")  # the caller's transaction may go on
    return inserted


async def claim_due(conn: psycopg.AsyncConnection, limit: int, lease_s: float) -> list[dict]:
    """Pending deliveries whose time has come, and `sending` ones whose lease ran out (a crashed sender)."""
    async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "UPDATE deliveries d SET status = 'sending', next_attempt_at = now() + make_interval(secs => %s) "
            "FROM (SELECT delivery_id FROM deliveries WHERE status IN ('pending', 'sending') AND next_attempt_at <= now()"
            " ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED) due WHERE d.delivery_id = due.delivery_id "
            "RETURNING d.*",
            (lease_s, limit),
        )
        return await cur.fetchall()


async def record_results(conn: psycopg.AsyncConnection, results: list[tuple]) -> None:
    """(delivery_id, status, error, next_attempt_at, sent_at, grouped_into) after a send attempt."""
    if not results:
        return
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS delivery_results (delivery_id text, status text, error text,"
            " next_attempt_at timestamptz, sent_at timestamptz, grouped_into text) ON COMMIT DELETE ROWS"
        )
        async with cur.copy("COPY delivery_results FROM STDIN") as copy:
            for r in results:
                await copy.write_row(r)
        await cur.execute(
            "UPDATE deliveries d SET status = r.status, error = r.error, next_attempt_at = r.next_attempt_at,"
            " sent_at = r.sent_at, grouped_into = r.grouped_into, attempts = d.attempts + 1 "
            "FROM delivery_results r WHERE d.delivery_id = r.delivery_id"
        )


async def deliveries_for(conn: psycopg.AsyncConnection, subject_id: str) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM deliveries WHERE subject_id = %s ORDER BY created_at, tier, channel", (subject_id,)
        )
        return await cur.fetchall()


_SUMMARY_CHANNELS = (
    "SELECT channel, count(*) AS total,"
    " count(*) FILTER (WHERE status = 'sent') AS sent,"
    " count(*) FILTER (WHERE status IN ('pending', 'sending')) AS pending,"
    " count(*) FILTER (WHERE status = 'dead') AS dead,"
    " count(*) FILTER (WHERE grouped_into IS NOT NULL) AS grouped,"
    " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at) * 1000)"
    "   FILTER (WHERE status = 'sent') AS p50_ms,"
    " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM sent_at - created_at) * 1000)"
    "   FILTER (WHERE status = 'sent') AS p99_ms "
    "FROM deliveries GROUP BY channel ORDER BY channel"
)
_SUMMARY_ESCALATIONS = (
    "SELECT e.alert_id, a.title_en, a.title_zh, a.severity, e.rule, e.tier, e.round, e.state, e.next_due_at,"
    " a.acknowledged_at, a.acknowledged_by,"
    " (SELECT count(*) FROM deliveries d WHERE d.subject_id = e.alert_id AND (d.tier > 0 OR d.round > 0))"
    "   AS escalated_deliveries"
    " FROM notify_escalations e JOIN alerts a USING (alert_id) WHERE e.tier > 0 OR e.round > 0 "
    "ORDER BY e.updated_at DESC LIMIT 50"
)
_SUMMARY_TOTALS = "SELECT count(*) AS alerts, coalesce(sum(repeat_count), 0) AS repeats FROM alerts"


def _summary(channels: list[dict], escalations: list[dict], totals: dict) -> dict:
    for c in channels:
        for k in ("p50_ms", "p99_ms"):
            c[k] = round(float(c[k]), 1) if c[k] is not None else None
    return {
        "channels": channels,
        "escalations": escalations,
        "alerts": totals["alerts"],
        "deduplicated_repeats": int(totals["repeats"]),
    }


def delivery_summary(conn: psycopg.Connection | psycopg.AsyncConnection):
    """Per-channel delivery counts by status with p50/p99 latency (row created → channel accepted, ms),
    the escalated alerts, and alert/repeat totals.

    With a plain `psycopg.Connection` it returns the dict; with an `AsyncConnection`, an awaitable of it."""
    if isinstance(conn, psycopg.AsyncConnection):
        return _delivery_summary_async(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        channels = cur.execute(_SUMMARY_CHANNELS).fetchall()
        escalations = cur.execute(_SUMMARY_ESCALATIONS).fetchall()
        totals = cur.execute(_SUMMARY_TOTALS).fetchone()
    return _summary(channels, escalations, totals or {"alerts": 0, "repeats": 0})


async def _delivery_summary_async(conn: psycopg.AsyncConnection) -> dict:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SUMMARY_CHANNELS)
        channels = await cur.fetchall()
        await cur.execute(_SUMMARY_ESCALATIONS)
        escalations = await cur.fetchall()
        await cur.execute(_SUMMARY_TOTALS)
        totals = await cur.fetchone()
    return _summary(channels, escalations, totals or {"alerts": 0, "repeats": 0})


def delivery_summary_sync(db_url: str) -> dict:
    """`delivery_summary` from a database URL."""
    with psycopg.connect(db_url) as conn:
        return delivery_summary(conn)


# field tasks -----------------------------------------------------------------------------------
TASK_COLUMNS = (
    "task_id",
    "kind",
    "domain",
    "priority",
    "status",
    "title_zh",
    "title_en",
    "description_zh",
    "description_en",
    "lat",
    "lon",
    "district",
    "required_skills",
    "due_at",
    "related_alert_id",
    "created_at",
    "evidence",
)


async def insert_task(cur: psycopg.AsyncCursor, row: dict) -> bool:
    await cur.execute(
        f"INSERT INTO field_tasks ({', '.join(TASK_COLUMNS)}) VALUES ({', '.join(['%s'] * len(TASK_COLUMNS))}) "
        "ON CONFLICT (task_id) DO NOTHING",
        tuple(Jsonb(row[c]) if c in ("required_skills", "evidence") else row[c] for c in TASK_COLUMNS),
    )
    return cur.rowcount == 1


async def get_task(
    conn: psycopg.AsyncConnection | psycopg.AsyncCursor, task_id: str, *, lock: bool = False
) -> dict | None:
    sql = "SELECT * FROM field_tasks WHERE task_id = %s" + (" FOR UPDATE" if lock else "")
    if isinstance(conn, psycopg.AsyncCursor):
        await conn.execute(sql, (task_id,))
        row = await conn.fetchone()
        if row is None:
            return None
        return (
            dict(zip([d.name for d in conn.description or []], row, strict=True))
            if not isinstance(row, dict)
            else row
        )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, (task_id,))
        return await cur.fetchone()


async def list_tasks(
    conn: psycopg.AsyncConnection, *, assignee: str | None = None, limit: int = 500
) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM field_tasks WHERE (%s::text IS NULL OR assignee = %s) ORDER BY created_at DESC LIMIT %s",
            (assignee, assignee, limit),
        )
        return await cur.fetchall()


async def task_events(conn: psycopg.AsyncConnection, task_id: str) -> list[dict]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT status, actor, note, evidence, at FROM field_task_events WHERE task_id = %s ORDER BY id",
            (task_id,),
        )
        return await cur.fetchall()


async def workloads(cur: psycopg.AsyncCursor) -> dict[str, int]:
    await cur.execute(
        "SELECT assignee, count(*) FROM field_tasks WHERE status IN ('assigned', 'accepted', 'on_site')"
        " AND assignee IS NOT NULL GROUP BY assignee"
    )
    return {r[0]: r[1] for r in await cur.fetchall()}


async def staff_state(cur: psycopg.AsyncCursor) -> dict[str, tuple]:
    await cur.execute("SELECT person_id, lat, lon, available FROM notify_staff_state")
    return {r[0]: (r[1], r[2], r[3]) for r in await cur.fetchall()}


async def set_staff_state(
    conn: psycopg.AsyncConnection,
    person_id: str,
    lat: float | None,
    lon: float | None,
    available: bool | None,
) -> None:
    await conn.execute(
        "INSERT INTO notify_staff_state (person_id, lat, lon, available) VALUES (%s, %s, %s, coalesce(%s, true)) "
        "ON CONFLICT (person_id) DO UPDATE SET lat = coalesce(EXCLUDED.lat, notify_staff_state.lat),"
        " lon = coalesce(EXCLUDED.lon, notify_staff_state.lon),"
        " available = coalesce(%s, notify_staff_state.available), updated_at = now()",
        (person_id, lat, lon, available, available),
    )


async def set_task_state(
    cur: psycopg.AsyncCursor,
    task_id: str,
    *,
    status: str,
    assignee: str | None,
    actor: str,
    note: str | None = None,
    evidence: dict | None = None,
    rejected_by: str | None = None,
) -> None:
    await cur.execute(
        "UPDATE field_tasks SET status = %s, assignee = %s, updated_at = now(),"
        " assigned_at = CASE WHEN %s = 'assigned' THEN now() ELSE assigned_at END,"
        " rejected_by = CASE WHEN %s::text IS NULL THEN rejected_by ELSE rejected_by || to_jsonb(%s::text) END,"
        " evidence = evidence || %s WHERE task_id = %s",
        (status, assignee, status, rejected_by, rejected_by, Jsonb(evidence or {}), task_id),
    )
    await cur.execute(
        "INSERT INTO field_task_events (task_id, status, actor, note, evidence) VALUES (%s, %s, %s, %s, %s)",
        (task_id, status, actor, note, Jsonb(evidence or {})),
    )


async def times_in_state(cur: psycopg.AsyncCursor, task_id: str, status: str) -> int:
    """How often the task has entered `status` so far (its events)."""
    await cur.execute(
        "SELECT count(*) FROM field_task_events WHERE task_id = %s AND status = %s", (task_id, status)
    )
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def due_task_deadlines(cur: psycopg.AsyncCursor, limit: int = 100) -> list[dict]:
    await cur.execute(
        "SELECT * FROM field_tasks WHERE due_at <= now() AND deadline_escalated_at IS NULL"
        " AND status NOT IN ('done', 'cancelled') ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (limit,),
    )
    cols = [d.name for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


async def mark_deadline_escalated(cur: psycopg.AsyncCursor, task_id: str) -> None:
    await cur.execute(
        "UPDATE field_tasks SET deadline_escalated_at = now(), updated_at = now() WHERE task_id = %s",
        (task_id,),
    )
    await cur.execute(
        "INSERT INTO field_task_events (task_id, status, actor, note) "
        "SELECT task_id, status, 'notify', 'deadline passed: escalated' FROM field_tasks WHERE task_id = %s",
        (task_id,),
    )


async def insert_dead_letter(cur: psycopg.AsyncCursor, env: dict) -> None:
    import base64

    p = env["payload"]
    await cur.execute(
        "INSERT INTO dead_letters (event_id, received_at, stage, reason_code, reason, origin, gateway_id, sensor_id,"
        " original) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
        (
            env["event_id"],
            p["received_at"],
            p["stage"],
            p["reason_code"],
            p["reason"],
            p["origin"],
            p.get("gateway_id"),
            p.get("sensor_id"),
            base64.b64decode(p["original_b64"]),
        ),
    )


# outbox -----------------------------------------------------------------------------------------
async def add_to_outbox(cur: psycopg.AsyncCursor, rows: list[tuple[str, str, bytes, bytes]]) -> None:
    """(event_id, topic, key, value) records to publish once the caller's transaction commits."""
    if rows:
        await cur.executemany(
            "INSERT INTO notify_outbox (event_id, topic, key, value) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (event_id) DO NOTHING", rows)


async def pending_outbox(cur: psycopg.AsyncCursor, limit: int = 500) -> list[tuple[str, str, bytes, bytes]]:
    """Unpublished outbox records, oldest first, locked for the caller's transaction (one publisher each)."""
    await cur.execute(
        "SELECT event_id, topic, key, value FROM notify_outbox WHERE published_at IS NULL ORDER BY created_at "
        "LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))
    return [(r[0], r[1], bytes(r[2]), bytes(r[3])) for r in await cur.fetchall()]


async def mark_published(cur: psycopg.AsyncCursor, event_ids: list[str]) -> None:
    if event_ids:
        await cur.execute("UPDATE notify_outbox SET published_at = now() WHERE event_id = ANY(%s)", (event_ids,))


async def keep_leases(conn: psycopg.AsyncConnection, held: list[tuple[str, datetime]], lease_s: float) -> set[str]:
    """Renew the leases of deliveries about to be sent that waited long; (delivery_id, next_attempt_at as held).
    Returns the ids still ours: a row the retry loop re-leased meanwhile (its next_attempt_at changed) is its to
    send, and sending it here too would send it twice."""
    if not held:
        return set()
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(
            "UPDATE deliveries d SET next_attempt_at = now() + make_interval(secs => %s) "
            "FROM unnest(%s::text[], %s::timestamptz[]) AS h(id, held) "
            "WHERE d.delivery_id = h.id AND d.next_attempt_at = h.held AND d.status = 'sending' "
            "RETURNING d.delivery_id",
            (lease_s, [h[0] for h in held], [h[1] for h in held]),
        )
        return {r[0] for r in await cur.fetchall()}
