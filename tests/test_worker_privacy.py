"""Workers' personal data after the security review of 2026-11-29: worker alerts on the shared alerts topic name
the worker per episode (two episodes of one worker cannot be linked, one episode's messages share one subject and
key), a restarted emergency service takes up the conditions still open under those keys, the query API and the
open-data export serve no alert about a worker, and retention takes the worker out of old rescue tasks, worker
alerts and worker incidents (real PostgreSQL, and the API as a real process)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import httpx
import pandas as pd
import psycopg
import pytest
from conftest import wait_for
from psycopg.types.json import Jsonb

from schemas.observations import Observation, QualifiedValue

KEY = "worker-privacy-test-key-0123456789abcdef"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _service(tmp_path, pool=None):
    from services.emergency.handlers import EmergencyService
    from services.emergency.settings import EmergencySettings

    s = EmergencySettings(db_url="postgresql://unused/none", state_dir=tmp_path, emergency_pseudonym_key=KEY)
    return EmergencyService(s, pool, config={})


def _reading(t: str, sensor: str = "wb-7", **values) -> Observation:
    return Observation(sensor_id=sensor, domain="safety", kind="wearable", gateway_id="gw-test", district="d05",
                       lat=0.0, lon=0.0, observed_at=pd.Timestamp(t).to_pydatetime(),
                       values={q: QualifiedValue(value=v, unit="1", qc=1) for q, v in values.items()})


def _run(svc, readings: list[Observation]) -> list[tuple[str, dict]]:
    out = []
    for o in readings:
        out += [(x.topic, json.loads(x.value)["payload"]) for x in svc._worker(o)]  # noqa: SLF001
    return out


def _alerts(outs: list[tuple[str, dict]]) -> list[dict]:
    return [p for topic, p in outs if topic == "cityops.alerts.v1"]


def _heart_rate_episode(start: pd.Timestamp, minutes: int = 0) -> list[Observation]:
    """Raised (160 bpm, warning), graded up (185 bpm, alarm), then three normal readings: cleared."""
    t = [start + pd.Timedelta(minutes=minutes + i) for i in range(5)]
    return [_reading(t[0].isoformat(), heart_rate_bpm=160.0), _reading(t[1].isoformat(), heart_rate_bpm=185.0),
            *(_reading(x.isoformat(), heart_rate_bpm=80.0) for x in t[2:])]


def test_two_episodes_of_one_worker_cannot_be_linked_and_one_episodes_messages_share_a_subject(tmp_path):
    """A stable pseudonym on the shared alerts topic (read by other city systems, served as open data) let anyone
    link all alerts of one person over months. Now the subject is per episode: raise, update and clear of one
    heart-rate episode share it and its dedup key (the notification service folds and clears by the key), a
    second episode of the same worker gets another, and neither carries the stable pseudonym."""
    from services.emergency.domain.privacy import pseudonymise

    svc = _service(tmp_path)
    stable = pseudonymise("wb-7", KEY.encode())
    t0 = pd.Timestamp("2026-11-29T08:00Z")
    first = _alerts(_run(svc, _heart_rate_episode(t0)))
    second = _alerts(_run(svc, _heart_rate_episode(t0 + pd.Timedelta(days=20))))
    for episode in (first, second):
        assert [a["status"] for a in episode] == ["raised", "updated", "cleared"]
        assert len({a["evidence"]["worker"] for a in episode}) == 1
        assert len({a["dedup_key"] for a in episode}) == 1 and len({a["alert_id"] for a in episode}) == 1
        assert episode[0]["evidence"]["worker"] in episode[0]["dedup_key"]
        assert episode[0]["evidence"]["worker"] in episode[0]["message_en"]
    assert first[0]["evidence"]["worker"] != second[0]["evidence"]["worker"]
    assert first[0]["dedup_key"] != second[0]["dedup_key"]
    assert all(stable not in json.dumps(a, ensure_ascii=False) for a in first + second)
    # the service itself still knows the worker by the stable pseudonym
    assert stable in svc.episodes


def test_each_sos_press_is_its_own_subject_and_its_incident_and_rescue_task_name_it_so(tmp_path):
    """Two presses of the SOS button are two episodes (two subjects); readings of one held press repeat its
    subject. The public incident and the crew's task name the worker as the alert that opened them does."""
    from services.emergency.domain.privacy import pseudonymise

    svc = _service(tmp_path)
    stable = pseudonymise("wb-7", KEY.encode())
    held = _run(svc, [_reading("2026-11-29T12:00:00Z", heart_rate_bpm=80.0, sos=1.0),
                      _reading("2026-11-29T12:00:10Z", heart_rate_bpm=80.0, sos=1.0)])
    _run(svc, [_reading("2026-11-29T12:00:20Z", heart_rate_bpm=80.0)])  # let go
    again = _run(svc, [_reading("2026-11-29T12:40:00Z", heart_rate_bpm=80.0, sos=1.0)])
    press1 = [a for a in _alerts(held) if a["kind"] == "sos"]
    press2 = [a for a in _alerts(again) if a["kind"] == "sos"]
    assert len(press1) == 2 and len(press2) == 1
    assert press1[0]["evidence"]["worker"] == press1[1]["evidence"]["worker"]
    assert press1[0]["dedup_key"] == press1[1]["dedup_key"]
    assert press2[0]["evidence"]["worker"] != press1[0]["evidence"]["worker"]
    subject = press1[0]["evidence"]["worker"]
    (task,) = [p for topic, p in held if topic == "cityops.tasks.v1"]
    assert task["evidence"]["worker"] == subject and subject in task["description_en"]
    (tr,) = svc.incidents.values()
    msg = svc.message(tr, with_report=False)
    assert subject in msg.title_en
    everything = json.dumps([held, again, msg.model_dump(mode="json")], ensure_ascii=False)
    assert stable not in everything and "wb-7" not in everything


# -- against the real database ------------------------------------------------------------------------------------


def _store_alert(conn, a: dict) -> None:
    """The alert row as the notification service keeps it (the fields the services read back)."""
    conn.execute(
        "INSERT INTO alerts (alert_id, domain, kind, severity, level, status, title_zh, title_en, message_zh,"
        " message_en, lat, lon, district, dedup_key, raised_at, evidence) VALUES (%s, %s, %s, %s, %s, 'open', %s,"
        " %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (a["alert_id"], a["domain"], a["kind"], a["severity"], a.get("level"), a["title_zh"], a["title_en"],
         a["message_zh"], a["message_en"], (a.get("location") or {}).get("lat"), (a.get("location") or {}).get("lon"),
         a.get("district"), a["dedup_key"], a["raised_at"], Jsonb(a.get("evidence") or {})))


@pytest.mark.stack
async def test_a_restarted_service_takes_up_an_open_worker_condition_and_clears_it_under_its_key(db_url, tmp_path):
    """The episode pseudonym is not the worker's, so a restarted service cannot find a condition's worker by its
    key: it recomputes the pseudonym for the workers it knows (here a wearable with readings in the restricted
    table) and takes the episode up; the clearing then carries the stored alert's id and dedup key, and the
    notification service's clear by that key resolves the stored alert."""
    from psycopg_pool import AsyncConnectionPool

    from shared.notify import repository as notify_repository

    sensor = f"wb-{secrets.token_hex(3)}"
    t0 = pd.Timestamp("2026-11-29T08:00Z")
    before = _service(tmp_path / "before")
    raised = _alerts(_run(before, [_reading(t0.isoformat(), sensor, heart_rate_bpm=160.0)]))
    assert [a["status"] for a in raised] == ["raised"]
    with psycopg.connect(db_url) as conn:
        _store_alert(conn, raised[0])
        conn.execute("INSERT INTO restricted.worker_observations (time, sensor_id, worker_id, quantity, value, unit,"
                     " qc) VALUES (%s, %s, %s, 'heart_rate_bpm', 160, 'bpm', 1)", (t0.to_pydatetime(), sensor, sensor))

    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        after = _service(tmp_path / "after", pool)
        assert await after.restore_open_alerts() == 1
        outs = _alerts(_run(after, [_reading((t0 + pd.Timedelta(minutes=i)).isoformat(), sensor, heart_rate_bpm=80.0)
                                    for i in range(1, 4)]))
    finally:
        await pool.close()
    assert [a["status"] for a in outs] == ["cleared"]
    assert outs[0]["alert_id"] == raised[0]["alert_id"] and outs[0]["dedup_key"] == raised[0]["dedup_key"]
    assert outs[0]["evidence"]["worker"] == raised[0]["evidence"]["worker"]
    async with await psycopg.AsyncConnection.connect(db_url) as conn, conn.cursor() as cur:
        assert await notify_repository.clear_alerts(cur, [outs[0]["dedup_key"]], "source") == [raised[0]["alert_id"]]


async def test_a_restarted_service_keeps_a_motionless_workers_man_down_open_until_they_move(db_url, tmp_path):
    """Man-down takes 90 s of stillness to judge, and a restarted monitor had none: the restored episode read the
    first readings of a worker who had not moved as 'back to normal' and sent an all-clear, then paged again under a
    new subject. The restored condition now resumes the stillness; the worker moving clears it under its key."""
    from psycopg_pool import AsyncConnectionPool

    sensor = f"wb-{secrets.token_hex(3)}"
    t0 = pd.Timestamp("2026-11-29T08:00Z")

    def reading(i: int, lat: float = 30.25):
        return _reading((t0 + pd.Timedelta(seconds=10 * i)).isoformat(), sensor, heart_rate_bpm=80.0, lat=lat,
                        lon=120.15)

    before = _service(tmp_path / "before")
    raised = [a for a in _alerts(_run(before, [reading(i) for i in range(12)])) if a["kind"] == "man_down"]
    assert raised and raised[0]["status"] == "raised"
    with psycopg.connect(db_url) as conn:
        _store_alert(conn, raised[-1])
        conn.execute("INSERT INTO restricted.worker_observations (time, sensor_id, worker_id, quantity, value, unit,"
                     " qc) VALUES (%s, %s, %s, 'heart_rate_bpm', 80, 'bpm', 1)",
                     ((t0 + pd.Timedelta(seconds=110)).to_pydatetime(), sensor, sensor))
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        after = _service(tmp_path / "after", pool)
        assert await after.restore_open_alerts() == 1
        still = _alerts(_run(after, [reading(i) for i in range(12, 30)]))
        moved = _alerts(_run(after, [reading(i, lat=30.26) for i in range(30, 34)]))
    finally:
        await pool.close()
    assert [a for a in still if a["kind"] == "man_down"] == []  # neither an all-clear nor a new page
    cleared = [a for a in moved if a["kind"] == "man_down"]
    assert [a["status"] for a in cleared] == ["cleared"]
    assert cleared[0]["dedup_key"] == raised[0]["dedup_key"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _public_and_worker_alerts(conn, tag: str) -> tuple[dict, dict]:
    now = datetime.now(UTC) - timedelta(hours=1)
    common = {"severity": "major", "level": "orange", "district": "d05", "raised_at": now}
    public = {"alert_id": f"air-{tag}", "domain": "air", "kind": "aqi_exceedance", "title_zh": "空气质量",
              "title_en": "Air quality", "message_zh": "AQI 180", "message_en": "AQI 180",
              "location": {"lat": 30.2501, "lon": 120.1502}, "dedup_key": f"air:aqi:{tag}",
              "evidence": {"aqi": 180}, **common}
    pid = "w-" + secrets.token_hex(8)
    worker = {"alert_id": f"fall-{tag}", "domain": "emergency", "kind": "fall", "title_zh": "人员安全报警：跌倒",
              "title_en": "Worker safety alarm: fall", "message_zh": f"【报警】人员 {pid}：跌倒",
              "message_en": f"[ALARM] worker {pid}: fall", "location": {"lat": 30.2609, "lon": 120.1717},
              "dedup_key": f"emergency:worker:{pid}:fall", "evidence": {"worker": pid, "zone_ids": []}, **common}
    for a in (public, worker):
        _store_alert(conn, a)
    return public, worker


@pytest.mark.stack
def test_the_api_and_the_open_data_export_serve_no_alert_about_a_worker(db_url, tmp_path):
    """`/api/v1/alerts` (role open_data) and the FIWARE open-data export served worker alerts (fall, SOS, heart
    rate, restricted entry) with the worker's pseudonym in the text. An employee's safety is not the city's open
    data, and a district and a minute can point at one person on a shift: they are left out (a position, had one
    been stored, with them); every other alert is served as before."""
    from shared.notify.domain.auth import sign_token
    from shared.opendata import fiware

    tag = secrets.token_hex(3)
    with psycopg.connect(db_url) as conn:
        public, worker = _public_and_worker_alerts(conn, tag)
        start, end = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC) + timedelta(hours=1)
        exported = fiware.export(conn, start=start, end=end)
    ids = {e["id"] for e in exported if e["type"] == "Alert"}
    assert f"urn:ngsi-ld:Alert:cityops:{public['alert_id']}" in ids
    assert f"urn:ngsi-ld:Alert:cityops:{worker['alert_id']}" not in ids
    assert worker["evidence"]["worker"] not in json.dumps(exported, ensure_ascii=False)

    (tmp_path / "roster.yaml").write_text("people:\n  - {id: t-admin, name: Test admin, roles: [admin]}\n")
    (tmp_path / "consumers.yaml").write_text("people:\n  - {id: t-open, name: Open data test, roles: [open_data]}\n")
    secret = "worker-privacy-" + tag
    port = _free_port()
    log_path = tmp_path / "api.log"
    with open(log_path, "w") as log:
        p = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "api", "serve", "--port", str(port)], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CITYOPS_DB_URL": db_url, "CITYOPS_API_SESSION_SECRET": secret,
                 "CITYOPS_API_ROSTER": str(tmp_path / "roster.yaml"),
                 "CITYOPS_API_CONSUMERS": str(tmp_path / "consumers.yaml")})
        try:
            def ready():
                if p.poll() is not None:
                    raise AssertionError(f"api exited {p.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(ready, timeout=90, what="api /readyz")
            for sub, role in (("t-open", "open_data"), ("t-admin", "admin")):
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts",
                              params={"start": start.isoformat(), "end": end.isoformat(), "limit": 1000},
                              headers={"Authorization": "Bearer " + sign_token(secret, sub=sub, role=role)},
                              timeout=30)
                assert r.status_code == 200, r.text
                got = {i["alert_id"]: i for i in r.json()["items"]}
                assert public["alert_id"] in got and got[public["alert_id"]]["lat"] == 30.2501
                assert worker["alert_id"] not in got
                assert worker["evidence"]["worker"] not in r.text and "120.1717" not in r.text
        finally:
            p.terminate()
            p.wait(timeout=20)


@pytest.mark.stack
def test_retention_takes_the_worker_out_of_old_rescue_tasks_alerts_and_incidents(db_url):
    """Worker readings were deleted after 7 days, but the rescue task (the worker's last position, the pseudonym in
    its text and evidence), its deliveries, the worker alerts and the worker incident kept the worker for ever.
    Past the retention they keep what accounts for the response and lose the worker: the task points at its
    incident's public location. Newer rows and rows about no worker are untouched; a second run changes nothing."""
    from services.emergency import repository as emergency_repository
    from shared.storage.migrate import enforce_retention

    tag = secrets.token_hex(3)
    pid, new_pid = "w-" + secrets.token_hex(8), "w-" + secrets.token_hex(8)
    old, recent = datetime.now(UTC) - timedelta(days=10), datetime.now(UTC) - timedelta(days=1)
    inc_id = f"inc-worke-{tag}"
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO incidents (incident_id, kind, status, severity, title_zh, title_en, lat, lon, districts,"
            " opened_at, updated_at, related_alert_ids) VALUES (%s, 'worker_safety', 'resolved', 'critical', %s, %s,"
            " 30.25, 120.15, '[\"d05\"]', %s, %s, '[]')",
            (inc_id, f"【紧急】人员 {pid}：倒地", f"[CRITICAL] worker {pid}: man down", old, old))

        def task(task_id, created, worker, kind="respond_incident"):
            ev = {"worker": worker, "incident_id": inc_id, "kind": "man_down"} if worker else {"machine_id": "p-1"}
            conn.execute(
                "INSERT INTO field_tasks (task_id, kind, domain, priority, status, assignee, title_zh, title_en,"
                " description_zh, description_en, lat, lon, district, created_at, evidence) VALUES (%s, %s,"
                " 'emergency', 'urgent', 'done', 'fs-wu', %s, %s, %s, %s, 30.261234, 120.171234, 'd05', %s, %s)",
                (task_id, kind, "人员救援：倒地", "Worker rescue: man down", f"人员 {worker} 倒地。立即前往。",
                 f"Worker {worker}: man down. Go now.", created, Jsonb(ev)))

        task(f"t-old-{tag}", old, pid)
        task(f"t-new-{tag}", recent, new_pid)
        task(f"t-pump-{tag}", old, None, kind="inspect_equipment")
        conn.execute(
            "INSERT INTO deliveries (delivery_id, idempotency_key, subject_kind, subject_id, recipient, channel,"
            " language, status, message, created_at) VALUES (%s, %s, 'task', %s, 'fs-wu', 'email', 'zh', 'sent', %s,"
            " %s)", (f"d-{tag}", f"d-{tag}", f"t-old-{tag}",
                     Jsonb({"subject": "人员救援", "body": f"人员 {pid} 倒地 30.261234,120.171234"}), old))
        for aid, when, who in ((f"a-old-{tag}", old, pid), (f"a-new-{tag}", recent, new_pid),
                               (f"a-open-{tag}", old, pid)):
            _store_alert(conn, {"alert_id": aid, "domain": "emergency", "kind": "man_down", "severity": "critical",
                                "level": "red", "title_zh": "人员安全紧急：倒地", "title_en": "Worker safety: man down",
                                "message_zh": f"【紧急】人员 {who}：倒地", "message_en": f"[CRITICAL] worker {who}: man down",
                                "district": "d05", "dedup_key": f"emergency:worker:{who}:man_down", "raised_at": when,
                                "evidence": {"worker": who, "grade": 3}})
        # an alert still open keeps its worker, so that its clearing (by dedup key) still finds it
        conn.execute("UPDATE alerts SET resolved_at = %s WHERE alert_id = %s", (old, f"a-old-{tag}"))
        got = enforce_retention(conn, worker_days=7)

        def row(sql, *args):
            return conn.execute(sql, args).fetchone()

        title, desc, lat, lon, ev, assignee, status = row(
            "SELECT title_en, description_zh || description_en, lat, lon, evidence, assignee, status FROM field_tasks"
            " WHERE task_id = %s", f"t-old-{tag}")
        assert pid not in title + desc and "worker" not in ev and ev["incident_id"] == inc_id
        assert (lat, lon) == (30.25, 120.15) and (assignee, status) == ("fs-wu", "done")
        new = row("SELECT description_en, lat, evidence FROM field_tasks WHERE task_id = %s", f"t-new-{tag}")
        assert new_pid in new[0] and new[1] == 30.261234 and new[2]["worker"] == new_pid
        assert row("SELECT lat, evidence FROM field_tasks WHERE task_id = %s", f"t-pump-{tag}") == (
            30.261234, {"machine_id": "p-1"})
        (message,) = row("SELECT message FROM deliveries WHERE delivery_id = %s", f"d-{tag}")
        assert pid not in json.dumps(message, ensure_ascii=False) and "30.2612" not in json.dumps(message)
        a_old = row("SELECT message_zh || message_en, dedup_key, evidence FROM alerts WHERE alert_id = %s",
                    f"a-old-{tag}")
        assert pid not in a_old[0] + a_old[1] and "worker" not in a_old[2]
        assert a_old[1] == "emergency:worker:w-***:man_down"
        assert new_pid in row("SELECT message_en FROM alerts WHERE alert_id = %s", f"a-new-{tag}")[0]
        assert row("SELECT dedup_key FROM alerts WHERE alert_id = %s", f"a-open-{tag}")[0] == (
            f"emergency:worker:{pid}:man_down")
        assert pid not in "".join(row("SELECT title_zh, title_en FROM incidents WHERE incident_id = %s", inc_id))
        assert {k: got.get(k) for k in ("field_tasks_stripped", "deliveries_stripped", "alerts_stripped",
                                        "incidents_stripped")} == {"field_tasks_stripped": 1, "deliveries_stripped": 1,
                                                                   "alerts_stripped": 1, "incidents_stripped": 1}
    again = emergency_repository.enforce_retention(db_url, 7.0)
    assert {k: v for k, v in again.items() if k.endswith("_stripped")} == {
        "field_tasks_stripped": 0, "deliveries_stripped": 0, "alerts_stripped": 0, "incidents_stripped": 0}
