"""The emergency service as a real process (`cityops emergency serve`): retention of personal data on
plain PostgreSQL, the audited and role-checked worker-track endpoint, and dead letters for bad records."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.conftest import wait_for

pytestmark = [pytest.mark.stack, pytest.mark.timeout(180)]

TAG = secrets.token_hex(3)
SECRET = "test-secret-" + TAG
PORT = 18600 + secrets.randbelow(300)


@pytest.fixture(scope="module")
def service(stack_env, db_url, tmp_path_factory):
    state = tmp_path_factory.mktemp("emergency-state")
    with psycopg.connect(db_url) as conn:
        old, recent = datetime.now(UTC) - timedelta(days=10), datetime.now(UTC) - timedelta(hours=2)
        for t, q, v in [(old, "heart_rate_bpm", 80.0), (recent, "heart_rate_bpm", 91.0), (recent, "lat", 30.2)]:
            conn.execute("INSERT INTO restricted.worker_observations (time, sensor_id, worker_id, quantity, value, unit,"
                         " qc, lat, lon) VALUES (%s, %s, %s, %s, %s, 'x', 1, 30.2, 120.1)",
                         (t, f"wb-{TAG}", f"W-{TAG}", q, v))
    # the notification roster the tokens' subjects are checked against: an admin, a viewer, and an admin demoted
    # to viewer since (tokens issued before still say admin)
    roster = state / "roster.yaml"
    roster.write_text("people:\n"
                      "  - {id: sup-zhao, name: 赵主任, roles: [admin]}\n"
                      "  - {id: viewer-chen, name: 陈观察, roles: [viewer]}\n"
                      "  - {id: ex-admin, name: 前管理员, roles: [viewer]}\n", encoding="utf-8")
    env = {**os.environ, **stack_env, "CITYOPS_DB_URL": db_url, "CITYOPS_STATE_DIR": str(state),
           "CITYOPS_NOTIFY_ROSTER": str(roster),
           "CITYOPS_NOTIFY_SESSION_SECRET": SECRET, "CITYOPS_EMERGENCY_RETENTION_INTERVAL_S": "1",
           "CITYOPS_EMERGENCY_GROUP_PREFIX": f"cityops-emergency-privacy-{TAG}",
           "CITYOPS_KAFKA_START_AT_MS": str(int(time.time() * 1000) - 2000)}
    env.pop("CITYOPS_CITY_CONFIG", None)
    log = state / "service.log"
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "emergency", "serve", "--port", str(PORT)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"service exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{PORT}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, timeout=90, what="emergency service /readyz")
    yield f"http://127.0.0.1:{PORT}"
    proc.terminate()
    proc.wait(30)


def _token(role: str, sub: str = "officer-1") -> dict[str, str]:
    from shared.notify.domain.auth import sign_token

    return {"Authorization": "Bearer " + sign_token(SECRET, sub=sub, role=role)}


def test_retention_deletes_expired_personal_rows(service, db_url):
    def only_recent():
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT count(*) FILTER (WHERE time < now() - interval '7 days'), count(*) "
                                "FROM restricted.worker_observations WHERE worker_id = %s", (f"W-{TAG}",)).fetchone()
    assert wait_for(lambda: only_recent()[0] == 0, timeout=30, what="retention job") is True
    assert only_recent() == (0, 2)


def test_worker_track_needs_the_role_and_every_read_is_audited(service, db_url):
    url = f"{service}/emergency/workers/W-{TAG}/track"
    params = {"reason": "fall investigation inc-1", "hours": 24}

    def audits():
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT actor, role, detail FROM audit_log WHERE subject = %s ORDER BY id",
                                (f"worker:W-{TAG}",)).fetchall()

    r = httpx.get(url, params=params, timeout=30)
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    r = httpx.get(url, params=params, headers=_token("viewer", "viewer-chen"), timeout=30)
    assert r.status_code == 403 and "safety_officer" in r.json()["detail"]
    assert httpx.get(url, params={"hours": 1}, headers=_token("admin", "sup-zhao"), timeout=30).status_code == 422
    assert audits() == []
    for _ in range(2):
        r = httpx.get(url, params=params, headers=_token("admin", "sup-zhao"), timeout=30)
        assert r.status_code == 200, r.text
        assert {row["quantity"] for row in r.json()["rows"]} == {"heart_rate_bpm", "lat"}
    got = audits()
    assert [(a, r) for a, r, _ in got] == [("sup-zhao", "admin")] * 2
    assert got[0][2]["reason"] == "fall investigation inc-1" and got[0][2]["rows"] == 2


def test_worker_track_refuses_a_token_whose_subject_left_the_roster_or_lost_the_role(service, db_url):
    """The endpoint trusted the role in the token: a token lives 12 h, so an admin removed from the roster or
    demoted since kept reading workers' positions and health. Like the API and the console it now checks the
    notification roster: such a token gets 401 and is told to log in again; nothing is read or audited."""
    url = f"{service}/emergency/workers/W-{TAG}/track"
    params = {"reason": "fall investigation inc-2", "hours": 24}
    for who, role, why in [("ex-admin", "admin", "no longer yours"), ("gone-1", "admin", "no longer in the roster"),
                           ("officer-1", "safety_officer", "no longer in the roster")]:
        r = httpx.get(url, params=params, headers=_token(role, who), timeout=30)
        assert r.status_code == 401, (who, r.text)
        assert why in r.json()["detail"] and "log in again" in r.json()["detail"] and "重新登录" in r.json()["detail"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE actor IN ('ex-admin', 'gone-1', 'officer-1')"
                            ).fetchone()[0] == 0


@pytest.mark.parametrize(("topic", "record_type", "stage", "reason"), [
    ("cityops.observations.safety.v1", "observation.safety", "emergency-safety", "Observation"),
    ("cityops.observations.personal.restricted.v1", "alert", "emergency-personal", "personal topic"),
])
def test_bad_record_is_dead_lettered_with_the_reason_and_service_keeps_running(service, stack_env, topic,
                                                                               record_type, stage, reason):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared import kafka

    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    bad = json.dumps({"event_id": f"{TAG}-{stage}", "type": record_type,
                      "payload": {"sensor_id": f"gas-{TAG}", "values": "nonsense"}}).encode()
    since = int(time.time() * 1000) - 1000
    # a restricted topic's record keeps only its digest in the dead letter (the topic and table are not restricted)
    kept = kafka.redacted_personal(bad) if kafka.is_restricted(topic) else bad

    async def go():
        p = kafka.producer(bootstrap)
        await p.start()
        await (await p.send(topic, bad, key=f"gas-{TAG}".encode()))
        await p.stop()
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            await c._client.force_metadata_update()  # noqa: SLF001 - a group-less consumer knows no topics yet
            tps = [TopicPartition(kafka.DEADLETTER_TOPIC, i) for i in c.partitions_for_topic(kafka.DEADLETTER_TOPIC)]
            c.assign(tps)
            ends = await c.end_offsets(tps)
            found = await c.offsets_for_times({tp: since for tp in tps})
            for tp in tps:
                c.seek(tp, found[tp].offset if found.get(tp) else ends[tp])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for recs in (await c.getmany(timeout_ms=1000)).values():
                    for r in recs:
                        p = json.loads(r.value)["payload"]
                        if base64.b64decode(p["original_b64"]) == kept:
                            return p
            return None
        finally:
            await c.stop()

    dl = asyncio.run(go())
    assert dl is not None, f"no dead letter for the bad record on {topic}"
    assert dl["stage"] == stage and reason in dl["reason"], dl
    assert httpx.get(f"{service}/readyz", timeout=10).status_code == 200
    assert isinstance(httpx.get(f"{service}/emergency/incidents", timeout=10).json(), list)


def test_rainstorm_and_rising_drain_alerts_open_one_flood_incident(service, stack_env, db_url):
    """Cross-domain rule: a weather rainstorm signal and a water drain alert for a low-lying district
    (d05) within two hours -> one flood incident with a respond task, however often the alerts repeat."""
    from schemas.alerts import Alert
    from shared import kafka
    from shared.stream import alert_output

    t = datetime(2026, 11, 20, 8, 0, tzinfo=UTC) + timedelta(minutes=secrets.randbelow(50))
    common = {"title_zh": "测试", "title_en": "test", "message_zh": "测试", "message_en": "test", "district": "d05"}
    rain = Alert(alert_id=f"rain-{TAG}", domain="weather", kind="rainstorm_signal", severity="major", level="orange",
                 dedup_key=f"weather:rainstorm:d05:{TAG}", raised_at=t, evidence={"observed_at": t.isoformat()},
                 **common)
    drain = Alert(alert_id=f"drain-{TAG}", domain="water", kind="drain_rising", severity="major", level="yellow",
                  dedup_key=f"water:drain:d05:{TAG}", raised_at=t + timedelta(minutes=20),
                  evidence={"observed_at": t.isoformat(), "sensor_id": f"drain-{TAG}", "level_m": 1.4,
                            "rise_m_per_h": 0.5}, **common)

    async def send():
        p = kafka.producer(stack_env["CITYOPS_KAFKA_BOOTSTRAP"])
        await p.start()
        for a in (rain, drain, rain, drain):
            o = alert_output(a, source="test")
            await (await p.send(o.topic, o.value, key=o.key))
        await p.stop()

    asyncio.run(send())

    def flood():
        with psycopg.connect(db_url) as conn:
            return conn.execute("SELECT incident_id, districts, related_alert_ids, status FROM incidents "
                                "WHERE kind = 'flood' AND related_alert_ids ? %s", (rain.alert_id,)).fetchall()

    rows = wait_for(flood, timeout=60, what="flood incident")
    assert len(rows) == 1 and rows[0][1] == ["d05"] and rows[0][3] in ("dispatched", "reported", "detected")
