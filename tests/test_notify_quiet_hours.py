"""Quiet hours and the escalation clock, on the real PostgreSQL.

The service is started (database, Kafka producer, channels) but its workers are not run: the test drives the
consumer's batch handling and the escalation timer itself, so nothing else fires an escalation meanwhile. The quiet
window is set around the current time, since the timer compares due times with the database's clock.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import psycopg
import pytest
import pytest_asyncio
import yaml

from schemas.alerts import Alert

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="module")]

ROSTER = {
    "people": [
        {"id": "q-disp", "name": "Dispatcher", "language": "en", "roles": ["dispatcher"], "email": "d@q.example"},
        {"id": "q-sup", "name": "主任", "language": "zh", "roles": ["admin"], "email": "s@q.example"},
    ]
}


def _routing() -> dict:
    now = datetime.now(UTC)
    return {
        "timezone": "UTC",
        "rate_limit_per_minute": 1000,
        "group_window_s": 0,
        # quiet now, for an hour more: the night of the test
        "quiet_hours": {"start": (now - timedelta(hours=1)).strftime("%H:%M"),
                        "end": (now + timedelta(hours=1)).strftime("%H:%M"), "severities": ["info", "minor"]},
        "rules": [{"name": "all", "tiers": [
            {"recipients": ["q-disp"], "channels": ["email"], "ack_timeout_s": 600},
            {"recipients": ["q-sup"], "channels": ["email"], "ack_timeout_s": 600},
        ]}],
        "tasks": {"channels": ["email"], "deadline_channels": ["email"]},
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def svc(db_url, stack_env, tmp_path_factory):
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings

    d = tmp_path_factory.mktemp("notify-quiet")
    (d / "roster.yaml").write_text(yaml.safe_dump(ROSTER, allow_unicode=True))
    (d / "routing.yaml").write_text(yaml.safe_dump(_routing()))
    s = NotifySettings(db_url=db_url, notify_routing=d / "routing.yaml", notify_roster=d / "roster.yaml",
                       notify_alerts_topic=f"test.notify.quiet.{secrets.token_hex(4)}", notify_smtp_port=1)
    service = NotifyService(s)
    await service.start()
    yield service
    await service.close()


def _alert(severity: str) -> Alert:
    return Alert(alert_id=f"al-{secrets.token_hex(5)}", domain="weather", kind="sensor_fault", severity=severity,
                 title_zh="传感器故障", title_en="Sensor fault", message_zh="请检查。", message_en="Please check.",
                 district="d05", dedup_key=f"weather:sf:{secrets.token_hex(4)}", raised_at=datetime.now(UTC))


async def _raise(svc, alert: Alert) -> None:
    from shared.notify.testing import encode_event

    rec = SimpleNamespace(topic=svc.s.notify_alerts_topic, partition=0, offset=secrets.randbelow(10**9),
                          value=encode_event("alert", alert, event_id=f"ev-{secrets.token_hex(6)}"))
    await svc.handle_records([rec])


def _rows(db_url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(db_url) as c:
        return c.execute(sql, args).fetchall()


async def test_a_quiet_alerts_escalation_clock_starts_when_its_notifications_go_out(svc, db_url):
    """A minor alert at night is held until morning, but its escalation was due ten minutes after it came in: the
    timer then escalated every ten minutes all night, each escalation held too, and at 07:00 the supervisor got one
    "escalated, not acknowledged" message per round. The clock now starts at the release; an alert that is not
    held starts it at once."""
    quiet, loud = _alert("minor"), _alert("major")
    for a in (quiet, loud):
        await _raise(svc, a)
    ((release, hold),) = _rows(db_url, "SELECT next_attempt_at, hold_reason FROM deliveries WHERE subject_id = %s",
                               quiet.alert_id)
    assert hold == "quiet_hours" and release > datetime.now(UTC) + timedelta(minutes=30)
    due = dict(_rows(db_url, "SELECT alert_id, next_due_at FROM notify_escalations WHERE alert_id = ANY(%s)",
                     [quiet.alert_id, loud.alert_id]))
    assert due[quiet.alert_id] == release + timedelta(seconds=600)
    assert due[loud.alert_id] < datetime.now(UTC) + timedelta(seconds=601)


async def test_an_escalation_due_in_quiet_hours_is_postponed_not_sent(svc, db_url):
    """An escalation that comes due while its alert's severity is quiet (an alert raised before the window, or
    stored before this fix) waits: no held "not acknowledged" message is planned, and its clock starts again at
    the release. A critical alert's escalation is never held."""
    quiet, critical = _alert("minor"), _alert("critical")
    for a in (quiet, critical):
        await _raise(svc, a)
    with psycopg.connect(db_url) as c:  # both came due during the night
        c.execute("UPDATE notify_escalations SET next_due_at = now() - interval '1 second' WHERE alert_id = ANY(%s)",
                  ([quiet.alert_id, critical.alert_id],))
    await svc.run_timers_once()
    ((release,),) = _rows(db_url, "SELECT next_attempt_at FROM deliveries WHERE subject_id = %s AND tier = 0",
                          quiet.alert_id)
    esc = {r[0]: r[1:] for r in _rows(db_url, "SELECT alert_id, tier, round, state, next_due_at FROM "
                                      "notify_escalations WHERE alert_id = ANY(%s)", [quiet.alert_id, critical.alert_id])}
    assert esc[quiet.alert_id] == (0, 0, "active", release + timedelta(seconds=600))
    assert not _rows(db_url, "SELECT 1 FROM deliveries WHERE subject_id = %s AND tier > 0", quiet.alert_id)
    assert esc[critical.alert_id][:3] == (1, 0, "active")
    assert _rows(db_url, "SELECT recipient, hold_reason FROM deliveries WHERE subject_id = %s AND tier = 1",
                 critical.alert_id) == [("q-sup", None)]
