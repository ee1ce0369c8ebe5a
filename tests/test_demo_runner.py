"""The demo's judgement of a run: which alerts it reads, and what its exit status says."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest


@pytest.mark.stack
def test_a_run_over_hours_days_ago_reads_the_alerts_of_its_simulated_window(db_url):
    """Alerts carry simulated time, but the demo read those raised since three days before the wall clock: a run
    repeated with `--end` a week back found no alert and reported every scenario missed."""
    from shared.demo.runner import _db_counts

    tag = secrets.token_hex(3)
    t0 = datetime(2026, 11, 10, 0, 0, tzinfo=UTC)
    with psycopg.connect(db_url) as c:
        for aid, at in ((f"demo-in-{tag}", t0 + timedelta(hours=5)), (f"demo-out-{tag}", t0 - timedelta(days=3))):
            c.execute(
                "INSERT INTO alerts (alert_id, domain, kind, severity, status, title_zh, title_en, message_zh,"
                " message_en, dedup_key, raised_at, evidence) VALUES (%s, 'water', 'leak', 'major', 'raised',"
                " 't', 't', 'm', 'm', %s, %s, %s)", (aid, f"demo:{aid}", at, json.dumps({})))
    db = _db_counts(db_url, [f"none-{tag}"], datetime.now(UTC), (t0, t0 + timedelta(hours=24)))
    ids = {a["alert_id"] if isinstance(a, dict) else a[0] for a in db["alerts"]}
    assert f"demo-in-{tag}" in ids and f"demo-out-{tag}" not in ids


def test_the_exit_status_fails_a_run_that_missed_a_scenario_or_did_not_settle(capsys):
    """`cityops demo` exited 0 whenever the messages were accounted for, also when every scenario was missed or the
    services never finished: a CI job or cron read such a run as good. Now each reason makes it 1, said on stderr."""
    from shared.demo.cli import exit_code

    good = {"accounted": True, "settled": {"settled": True},
            "scenarios": [{"domain": "water", "scenario": "pipe_burst", "detected": True},
                          {"domain": "air", "scenario": "x", "detected": None}]}
    assert exit_code(good) == 0
    missed = {**good, "scenarios": [{"domain": "water", "scenario": "pipe_burst", "detected": False}]}
    assert exit_code(missed) == 1 and "missed water/pipe_burst" in capsys.readouterr().err
    assert exit_code({**good, "settled": {"settled": False}}) == 1 and "still busy" in capsys.readouterr().err
    assert exit_code({**good, "accounted": False}) == 1
