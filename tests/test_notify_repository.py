"""SQL of the notification service against the real PostgreSQL."""

from __future__ import annotations

import psycopg
import pytest

pytestmark = [pytest.mark.stack]


async def test_a_due_escalation_carries_its_own_rule_not_the_alerts_first_one(db_url):
    """alerts.rule is the rule the first version matched; an upgraded alert's escalation is restarted under the
    rule of the more severe version. due_escalations joined both and returned alerts.rule (the later of two `rule`
    columns), so the upgraded alert escalated under the milder rule, or stopped as "rule is gone" when the first
    version matched none."""
    from shared.notify import repository

    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.cursor() as cur:
        await cur.execute(
            "INSERT INTO alerts (alert_id, domain, kind, severity, status, title_zh, title_en, message_zh, message_en,"
            " dedup_key, raised_at, rule) VALUES ('a-up', 'water', 'flood_risk', 'major', 'open', 't', 't', 'm', 'm',"
            " 'k-up', now(), NULL)")
        await cur.execute("INSERT INTO notify_escalations (alert_id, rule, tier, round, state, next_due_at) "
                          "VALUES ('a-up', 'flood-orange', 0, 0, 'active', now() - interval '1 minute')")
        due = await repository.due_escalations(cur)
    assert [(e["alert_id"], e["rule"], e["tier"]) for e in due] == [("a-up", "flood-orange", 0)]
