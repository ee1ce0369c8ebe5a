"""Pure notification logic: routing files, rule matching, quiet hours, rotas, assignment, templates, auth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from shared.notify import render
from shared.notify.domain import assign, auth
from shared.notify.domain.config import ConfigError, load_roster, load_routing, match_rule, quiet_until
from shared.settings import PROJECT_ROOT

ROSTER = {
    "people": [
        {"id": "ann", "name": "Ann", "roles": ["dispatcher"], "email": "a@x.example"},
        {"id": "bo", "name": "Bo", "roles": ["field_staff"], "language": "en", "skills": ["drain"]},
        {"id": "cy", "name": "Cy", "roles": ["field_staff"], "skills": ["drain"]},
    ],
    "groups": {"desk": ["ann"]},
    "rotas": {"drain": {"members": ["bo", "cy"], "shift_hours": 24, "start": "2026-01-01T08:00:00+08:00"}},
}


def _write(tmp_path: Path, name: str, data) -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def _routing(**over) -> dict:
    base = {
        "timezone": "Asia/Shanghai",
        "quiet_hours": {"start": "22:00", "end": "07:00", "severities": ["info", "minor"]},
        "rules": [
            {
                "name": "night-water",
                "match": {"domains": ["water"], "hours": "22:00-06:00", "min_severity": "major"},
                "tiers": [{"recipients": ["rota:drain"], "channels": ["sms"]}],
            },
            {
                "name": "water",
                "match": {"domains": ["water"], "districts": ["d05"]},
                "tiers": [{"recipients": ["group:desk"], "channels": ["email"]}],
            },
            {"name": "fallback", "tiers": [{"recipients": ["ann"], "channels": ["webhook"]}]},
        ],
    }
    base.update(over)
    return base


@pytest.fixture
def roster(tmp_path):
    return load_roster(_write(tmp_path, "roster.yaml", ROSTER))


def test_shipped_config_is_valid_and_routes_every_domain_to_webhook_email_mqtt():
    r = load_roster(PROJECT_ROOT / "config/notify/roster.yaml")
    routing = load_routing(PROJECT_ROOT / "config/notify/routing.yaml", r)
    at = datetime(2026, 11, 27, 10, tzinfo=UTC)
    for domain in ("air", "water", "weather", "emergency", "platform"):
        for sev in ("info", "minor", "major", "critical"):
            rule = match_rule(routing, domain=domain, kind="k", severity=sev, district="d05", at=at)
            assert rule is not None and {"webhook", "email", "mqtt"} <= set(rule.tiers[0].channels)
            assert len(rule.tiers) >= 2, "an unacknowledged alert must have somewhere to escalate"
    assert {"webhook", "email", "mqtt"} <= set(routing.tasks.channels)
    assert all(auth.verify_password(f"demo-{p.id}", p.password_hash) for p in r.people)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"rules": []}, "rules: List should have at least 1 item"),
        (
            {"rules": [{"name": "x", "tiers": [{"recipients": ["ann"], "channels": ["pigeon"]}]}]},
            "got 'pigeon'",
        ),
        (
            {"rules": [{"name": "x", "tiers": [{"recipients": ["nobody"], "channels": ["email"]}]}]},
            "no person 'nobody' in the roster",
        ),
        (
            {"rules": [{"name": "x", "tiers": [{"recipients": ["group:ops"], "channels": ["email"]}]}]},
            "no group 'ops'",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"hours": "8-18"},
                        "tiers": [{"recipients": ["ann"], "channels": ["email"]}],
                    }
                ]
            },
            "'8' is not a time of day: write HH:MM",
        ),
        (
            {
                "rules": [
                    {
                        "name": "x",
                        "match": {"severity": "major"},
                        "tiers": [{"recipients": ["ann"], "channels": ["email"]}],
                    }
                ]
            },
            "rules.0.match.severity: unknown key",
        ),
        (
            {
                "timezone": "Mars/Olympus",
                "rules": [{"name": "x", "tiers": [{"recipients": ["ann"], "channels": ["email"]}]}],
            },
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            {
                "rules": [
                    {"name": "x", "tiers": [{"recipients": ["ann"], "channels": ["email"]}]},
                    {"name": "x", "tiers": [{"recipients": ["ann"], "channels": ["email"]}]},
                ]
            },
            "rule name 'x' is used twice",
        ),
        ("rules: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_invalid_routing_files_fail_at_start_with_a_clear_message(tmp_path, roster, data, expected):
    path = _write(tmp_path, "routing.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_routing(path, roster)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_invalid_roster_names_the_problem(tmp_path):
    bad = {"people": [{"id": "ann", "name": "A", "roles": ["boss"]}], "groups": {"desk": ["zed"]}}
    with pytest.raises(ConfigError, match="roles.0"):
        load_roster(_write(tmp_path, "r.yaml", bad))
    bad = {"people": [{"id": "ann", "name": "A", "roles": ["viewer"]}], "groups": {"desk": ["zed"]}}
    with pytest.raises(ConfigError, match="group 'desk' lists 'zed'"):
        load_roster(_write(tmp_path, "r.yaml", bad))
    with pytest.raises(ConfigError, match="file not found"):
        load_roster(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("domain", "severity", "district", "hour_local", "rule"),
    [
        ("water", "major", "d05", 23, "night-water"),
        ("water", "major", "d05", 12, "water"),
        ("water", "minor", "d05", 23, "water"),  # below the night rule's min severity
        ("water", "major", "d01", 12, "fallback"),
        ("air", "critical", "d05", 23, "fallback"),
    ],
)
def test_rules_match_by_domain_severity_district_and_time_of_day(
    tmp_path, roster, domain, severity, district, hour_local, rule
):
    routing = load_routing(_write(tmp_path, "routing.yaml", _routing()), roster)
    at = datetime(2026, 11, 27, hour_local, 30, tzinfo=routing.tz)
    assert (
        match_rule(routing, domain=domain, kind="k", severity=severity, district=district, at=at).name == rule
    )


def test_quiet_hours_hold_low_severities_until_morning(tmp_path, roster):
    routing = load_routing(_write(tmp_path, "routing.yaml", _routing()), roster)
    night = datetime(2026, 11, 27, 23, 15, tzinfo=routing.tz)
    assert quiet_until(routing, "minor", night) == datetime(2026, 11, 28, 7, 0, tzinfo=routing.tz)
    assert quiet_until(routing, "major", night) is None
    assert quiet_until(routing, "info", datetime(2026, 11, 27, 6, 59, tzinfo=routing.tz)).hour == 7
    assert quiet_until(routing, "info", datetime(2026, 11, 27, 7, 0, tzinfo=routing.tz)) is None


def test_rota_hands_over_each_shift(roster):
    from zoneinfo import ZoneInfo

    tz = ZoneInfo("Asia/Shanghai")
    rota = roster.rotas["drain"]
    t0 = datetime(2026, 1, 1, 8, 0, tzinfo=tz)
    assert [rota.on_call(t0 + timedelta(hours=h), tz) for h in (0, 23, 24, 47, 48)] == [
        "bo",
        "bo",
        "cy",
        "cy",
        "bo",
    ]


def test_assignment_prefers_near_qualified_and_lightly_loaded():
    c = assign.Candidate
    cands = [
        c("near-busy", frozenset({"drain"}), 30.25, 120.15, True, 2, 3),
        c("far-free", frozenset({"drain"}), 30.30, 120.15, True, 0, 3),  # ~5.6 km away
        c("nearest-unskilled", frozenset({"air"}), 30.25, 120.15, True, 0, 3),
        c("off-duty", frozenset({"drain"}), 30.25, 120.15, False, 0, 3),
        c("full", frozenset({"drain"}), 30.25, 120.15, True, 3, 3),
        c("near-free", frozenset({"drain", "air"}), 30.26, 120.15, True, 0, 3),
    ]
    ranked = assign.rank(cands, lat=30.25, lon=120.15, required_skills=["drain"])
    assert [p for p, _ in ranked] == ["near-free", "far-free", "near-busy"]
    assert [
        p
        for p, _ in assign.rank(
            cands, lat=30.25, lon=120.15, required_skills=["drain"], exclude={"near-free"}
        )
    ][0] == "far-free"
    assert assign.rank(cands, lat=30.25, lon=120.15, required_skills=["welding"]) == []


@pytest.mark.parametrize(
    ("src", "dst", "ok"),
    [
        ("assigned", "accepted", True),
        ("accepted", "on_site", True),
        ("on_site", "done", True),
        ("assigned", "rejected", True),
        ("assigned", "done", False),
        ("done", "accepted", False),
        ("open", "on_site", False),
    ],
)
def test_task_lifecycle(src, dst, ok):
    assert assign.can_move(src, dst) is ok


def test_templates_speak_each_recipients_language():
    from zoneinfo import ZoneInfo

    alert = {
        "alert_id": "a1",
        "domain": "water",
        "kind": "leak",
        "severity": "critical",
        "title_zh": "主管爆裂",
        "title_en": "Main burst",
        "message_zh": "立即关阀。",
        "message_en": "Close the valve now.",
        "district": "d05",
        "raised_at": datetime(2026, 11, 27, 2, 0, tzinfo=UTC),
        "repeat_count": 2,
        "lat": 30.25,
        "lon": 120.15,
    }
    tz = ZoneInfo("Asia/Shanghai")
    zh = render.alert_message(alert, "zh", tier=0, round=0, tz=tz)
    en = render.alert_message(alert, "en", tier=2, round=1, tz=tz)
    assert (
        zh["subject"] == "【紧急】主管爆裂"
        and "2026-11-27 10:00" in zh["body"]
        and "重复：2 次" in zh["body"]
    )
    assert en["subject"].startswith("[ESCALATED tier 2, round 2] NOT ACKNOWLEDGED. [CRITICAL] Main burst")
    assert "Acknowledge alert a1" in en["body"]
    digest = render.digest_message([zh, zh], "zh")
    assert digest["subject"].startswith("【汇总】2 条相关告警")


def test_passwords_and_tokens():
    h = auth.hash_password("s3cret-pass")
    assert h.startswith("scrypt$") and auth.verify_password("s3cret-pass", h)
    assert not auth.verify_password("wrong", h) and not auth.verify_password("x", None)
    assert auth.hash_password("same") != auth.hash_password("same")  # salted
    tok = auth.sign_token("k", sub="ann", role="dispatcher")
    assert auth.read_token("k", tok)["sub"] == "ann"
    assert auth.read_token("other-key", tok) is None
    body, sig = tok.split(".")
    assert auth.read_token("k", body[:-2] + "xx." + sig) is None
    assert auth.read_token("k", auth.sign_token("k", sub="ann", role="admin", ttl_s=-1)) is None


def _planner(tmp_path, roster_data, routing_data, now):
    from shared.notify.handlers import NotifyService, Planner
    from shared.notify.settings import NotifySettings

    s = NotifySettings(
        kafka_bootstrap="unused:9092",
        db_url="postgresql://unused/x",
        notify_roster=_write(tmp_path, "roster.yaml", roster_data),
        notify_routing=_write(tmp_path, "routing.yaml", routing_data),
        notify_webhook_url="http://hooks.example/in",
    )
    return Planner(NotifyService(s), {}, {}, now)


def _plan(planner, subject, severity, group="air:aqi:d05", tier=0):
    planner.add(
        purpose="alert",
        kind="alert",
        subject_id=subject,
        severity=severity,
        people=["ann"],
        channels=["email", "webhook"],
        tier=tier,
        round_=0,
        data={},
        render_for=lambda lang: {"subject": subject, "body": ""},
        source_event_id=None,
        group_key=group,
    )
    return {r["channel"]: r for r in planner.rows if r["subject_id"] == subject}


def test_planner_groups_bursts_rate_limits_and_respects_quiet_hours(tmp_path):
    routing = _routing(group_window_s=60, rate_limit_per_minute=3)
    day = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai: not quiet
    p = _planner(tmp_path, ROSTER, routing, day)
    first = _plan(p, "a1", "major")
    assert first["email"]["status"] == "sending" and first["email"]["hold_reason"] is None
    second = _plan(p, "a2", "major")  # same group within the window: waits for the digest
    assert second["email"]["hold_reason"] == "grouped"
    assert second["email"]["next_attempt_at"] == day + timedelta(seconds=60)
    assert _plan(p, "a3", "critical")["email"]["hold_reason"] is None  # critical never waits
    _plan(p, "a4", "major", group="water:leak:d01")
    limited = _plan(p, "a5", "major", group="weather:rain:d02")  # 4th sent to ann this minute > 3
    assert limited["email"]["hold_reason"] == "rate_limit"
    assert _plan(p, "a6", "critical", group="x")["email"]["hold_reason"] is None
    assert len({r["idempotency_key"] for r in p.rows}) == len(p.rows)

    night = datetime(2026, 11, 27, 15, 30, tzinfo=UTC)  # 23:30 in Shanghai
    q = _planner(tmp_path, ROSTER, routing, night)
    held = _plan(q, "b1", "minor")
    assert held["email"]["hold_reason"] == "quiet_hours" and held["email"]["next_attempt_at"].hour == 7
    assert _plan(q, "b2", "major", group="g2")["email"]["hold_reason"] is None


def test_planner_records_a_missing_address_as_dead_with_the_fix(tmp_path):
    roster = {"people": [{"id": "ann", "name": "Ann", "roles": ["dispatcher"]}]}  # no e-mail
    p = _planner(
        tmp_path,
        roster,
        _routing(rules=[{"name": "r", "tiers": [{"recipients": ["ann"], "channels": ["email"]}]}]),
        datetime(2026, 11, 27, 12, tzinfo=UTC),
    )
    row = _plan(p, "a1", "major")["email"]
    assert row["status"] == "dead" and "no address for ann" in row["error"]
    assert row["next_attempt_at"] is None
