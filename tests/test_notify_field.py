"""Field tasks on the real stack: assignment from Kafka, MQTT push with broker ACLs, the mobile REST API."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
import pytest_asyncio
import yaml

from schemas.alerts import GeoPoint
from schemas.tasks import FieldTask
from shared.notify.domain.auth import hash_password
from tests.conftest import async_wait_for

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="module")]

PW = "correct horse battery"
HASH = hash_password(PW)


def _roster() -> dict:
    def fs(pid, lat, lon, skills, lang="zh"):
        return {
            "id": pid,
            "name": pid,
            "language": lang,
            "roles": ["field_staff"],
            "email": f"{pid}@t.example",
            "skills": skills,
            "lat": lat,
            "lon": lon,
            "password_hash": HASH,
        }

    return {
        "people": [
            fs("t-near", 30.251, 120.151, ["water_repair"]),
            fs("t-far", 30.300, 120.300, ["water_repair"], "en"),
            fs("t-air", 30.250, 120.150, ["air_inspection"]),
            {
                "id": "t-disp",
                "name": "Dispatcher",
                "language": "en",
                "roles": ["dispatcher"],
                "email": "d@t.example",
                "password_hash": HASH,
            },
            {
                "id": "t-view",
                "name": "Viewer",
                "language": "en",
                "roles": ["viewer"],
                "email": "v@t.example",
                "password_hash": HASH,
            },
        ]
    }


ROUTING = {
    "timezone": "UTC",
    "rate_limit_per_minute": 1000,
    "group_window_s": 0,
    "rules": [{"name": "all", "tiers": [{"recipients": ["t-disp"], "channels": ["email"]}]}],
    "tasks": {
        "channels": ["mqtt"],
        "unassigned_to": ["t-disp"],
        "deadline_escalate_to": ["t-disp"],
        "deadline_channels": ["mqtt"],
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(db_url, stack_env, tmp_path_factory):
    from aiokafka import AIOKafkaProducer
    from fastapi import FastAPI

    from shared.notify import endpoints
    from shared.notify.app import provision_mqtt_users
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings
    from shared.notify.testing import ServiceRunner, create_topics, delete_topics
    from shared.service import Readiness, health_app

    tag = secrets.token_hex(4)
    topics = {k: f"test.notify.{tag}.{k}" for k in ("alerts", "tasks", "updates")}
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    await create_topics(bootstrap, list(topics.values()))
    d = tmp_path_factory.mktemp("notify-field")
    (d / "roster.yaml").write_text(yaml.safe_dump(_roster()))
    (d / "routing.yaml").write_text(yaml.safe_dump(ROUTING))
    s = NotifySettings(
        db_url=db_url,
        notify_routing=d / "routing.yaml",
        notify_roster=d / "roster.yaml",
        notify_group=f"test-notify-{tag}",
        notify_alerts_topic=topics["alerts"],
        notify_tasks_topic=topics["tasks"],
        notify_task_updates_topic=topics["updates"],
        notify_smtp_port=1,
        notify_poll_s=0.2,
        notify_session_secret="test-" + tag,
    )
    svc = NotifyService(s, Readiness("db", "kafka", "channels"))
    provision_mqtt_users(svc.roster)
    app = endpoints.build(svc, health_app("notify", svc.readiness, FastAPI()))
    runner = await ServiceRunner(svc).start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notify")
    yield {"svc": svc, "settings": s, "producer": producer, "topics": topics, "db_url": db_url, "http": http}
    await http.aclose()
    await producer.stop()
    await runner.stop()
    await delete_topics(bootstrap, list(topics.values()))


def _task(skills, *, due_in_s: float | None = None, lat=30.25, lon=120.15) -> FieldTask:
    now = datetime.now(UTC)
    return FieldTask(
        task_id=f"task-{secrets.token_hex(4)}",
        kind="repair_pipe",
        domain="water",
        priority="high",
        title_zh="修复管道泄漏",
        title_en="Repair pipe leak",
        description_zh="D05 区主管泄漏。",
        description_en="Main leaking in D05.",
        location=GeoPoint(lat=lat, lon=lon),
        district="d05",
        required_skills=skills,
        due_at=now + timedelta(seconds=due_in_s) if due_in_s else None,
        created_at=now,
    )


async def _publish(env, task: FieldTask) -> None:
    from shared.notify.testing import encode_event

    await env["producer"].send_and_wait(
        env["topics"]["tasks"], encode_event("field_task", task), key=task.task_id.encode()
    )


def _rows(db_url, sql, *args):
    with psycopg.connect(db_url) as c:
        return c.execute(sql, args).fetchall()


def _subscribe(settings, person, topic):
    import paho.mqtt.client as mqtt

    got, codes, ready = [], [], threading.Event()
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{person}-{secrets.token_hex(3)}", protocol=mqtt.MQTTv5
    )
    c.username_pw_set(person, settings.mqtt_password("people", person))
    c.on_connect = lambda cl, ud, fl, rc, pr: cl.subscribe(topic, qos=1)

    def on_sub(cl, ud, mid, rcs, pr):
        codes.extend(rcs)
        ready.set()

    c.on_subscribe = on_sub
    c.on_message = lambda cl, ud, m: got.append(m)
    c.connect(settings.mqtt_host, settings.mqtt_port)
    c.loop_start()
    assert ready.wait(30), f"no SUBACK for {person}"
    return got, codes, c


async def _login(env, user) -> dict:
    r = await env["http"].post("/api/login", json={"username": user, "password": PW})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _state(env, task_id, status):
    async def check():
        r = _rows(env["db_url"], "SELECT status, assignee FROM field_tasks WHERE task_id = %s", task_id)
        return r[0] if r and r[0][0] == status else None

    return await async_wait_for(check, 30, what=f"task {task_id} {status}")


async def test_worker_receives_own_task_over_mqtt_and_cannot_read_anothers(env):
    s = env["settings"]
    own, own_codes, c1 = _subscribe(s, "t-near", "field/t-near/tasks")
    spy, spy_codes, c2 = _subscribe(s, "t-far", "field/t-near/tasks")  # someone else's topic
    spy_wild, _, c3 = _subscribe(s, "t-far", "field/#")
    try:
        task = _task(["water_repair"])
        await _publish(env, task)
        _, assignee = await _state(env, task.task_id, "assigned")
        assert assignee == "t-near"  # nearest of the two qualified; t-air lacks the skill

        async def pushed():
            return [m for m in own if task.task_id in m.payload.decode()]

        msgs = await async_wait_for(pushed, 30, what="the push on t-near's phone")
        body = json.loads(msgs[0].payload)
        assert (
            body["kind"] == "task"
            and body["data"]["assignee"] == "t-near"
            and "修复管道泄漏" in body["subject"]
        )
        assert own_codes[0].value < 0x80
        # the broker refuses the subscription (or at least never delivers): nothing leaks to t-far
        assert spy_codes[0].value >= 0x80 or not spy
        assert not [m for m in spy + spy_wild if task.task_id in m.payload.decode()]
    finally:
        for c in (c1, c2, c3):
            c.loop_stop()
            c.disconnect()


async def test_lifecycle_through_the_mobile_api_with_evidence(env):
    task = _task(["water_repair"], lat=30.30, lon=120.30)
    await _publish(env, task)
    await _state(env, task.task_id, "assigned")
    far = await _login(env, "t-far")
    http = env["http"]
    r = await http.get("/api/tasks", headers=far)
    assert r.status_code == 200 and isinstance(r.json(), list), r.text
    mine = r.json()
    assert [t["task_id"] for t in mine] == [task.task_id]
    for step in ("accept", "on_site"):
        r = await http.post(f"/api/tasks/{task.task_id}/{step}", headers=far, json={"note": step})
        assert r.status_code == 200, r.text
    r = await http.post(
        f"/api/tasks/{task.task_id}/done",
        headers=far,
        json={"note": "valve replaced", "photo_urls": ["https://photos.city.example/p1.jpg"]},
    )
    assert r.status_code == 200 and r.json()["status"] == "done"
    assert r.json()["evidence"]["photos"] == ["https://photos.city.example/p1.jpg"]
    r = await http.get(f"/api/tasks/{task.task_id}", headers=far)
    assert [e["status"] for e in r.json()["events"]] == ["open", "assigned", "accepted", "on_site", "done"]
    # a finished task does not move again, and the error says what is allowed
    r = await http.post(f"/api/tasks/{task.task_id}/accept", headers=far)
    assert r.status_code == 409 and "cannot become 'accepted'" in r.json()["message"]


async def test_reject_reassigns_to_next_best_and_staff_see_only_their_own(env):
    task = _task(["water_repair"])
    await _publish(env, task)
    await _state(env, task.task_id, "assigned")
    near, far = await _login(env, "t-near"), await _login(env, "t-far")
    http = env["http"]
    assert (await http.get(f"/api/tasks/{task.task_id}", headers=far)).status_code == 404
    assert (await http.post(f"/api/tasks/{task.task_id}/accept", headers=far)).status_code == 403
    r = await http.post(f"/api/tasks/{task.task_id}/reject", headers=near, json={"reason": "van broken down"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "assigned" and r.json()["assignee"] == "t-far"
    assert r.json()["rejected_by"] == ["t-near"]
    assert task.task_id in [t["task_id"] for t in (await http.get("/api/tasks", headers=far)).json()]
    assert task.task_id not in [t["task_id"] for t in (await http.get("/api/tasks", headers=near)).json()]
    # the second rejection leaves nobody qualified: open, dispatcher told
    r = await http.post(f"/api/tasks/{task.task_id}/reject", headers=far, json={"reason": "off shift"})
    assert r.json()["status"] == "open" and r.json()["assignee"] is None
    disp = await _login(env, "t-disp")
    r = await http.post(f"/api/tasks/{task.task_id}/assign", headers=disp, json={"person_id": "t-near"})
    assert r.status_code == 200 and r.json()["assignee"] == "t-near"
    audit = _rows(
        env["db_url"],
        "SELECT actor, action FROM audit_log WHERE subject = %s ORDER BY id",
        f"task:{task.task_id}",
    )
    assert ("t-disp", "assign") in audit and ("t-near", "task_rejected") in audit


async def test_invalid_api_requests_get_clear_errors(env):
    http = env["http"]
    http.cookies.clear()  # earlier logins left a session cookie in this client
    r = await http.get("/api/tasks")
    assert r.status_code == 401 and "POST /api/login" in r.json()["message"]
    r = await http.post("/api/login", json={"username": "t-near", "password": "wrong"})
    assert r.status_code == 401 and r.json()["error"] == "bad_credentials"
    near, view, disp = await _login(env, "t-near"), await _login(env, "t-view"), await _login(env, "t-disp")
    r = await http.post("/api/tasks/nope/reject", headers=near, json={"reason": "x"})
    assert r.status_code == 422 and "reason" in r.json()["message"]
    r = await http.post("/api/tasks/nope/done", headers=near, json={"photo_urls": ["not a url"]})
    assert r.status_code == 422 and "photo_urls" in r.json()["message"]
    r = await http.post("/api/tasks/nope/accept", headers=near, json={"bogus": 1})
    assert r.status_code == 422
    r = await http.post("/api/tasks/nope/accept", headers=disp)
    assert r.status_code == 404 and "GET /api/tasks" in r.json()["message"]
    r = await http.post("/api/alerts/x/acknowledge", headers=view)
    assert r.status_code == 403 and "dispatcher" in r.json()["message"]
    task = _task(["water_repair"])
    await _publish(env, task)
    await _state(env, task.task_id, "assigned")
    r = await http.post(f"/api/tasks/{task.task_id}/assign", headers=disp, json={"person_id": "t-view"})
    assert r.status_code == 422 and "not field staff" in r.json()["message"]
    r = await http.post("/api/me/location", headers=near, json={"lat": 123})
    assert r.status_code == 422


async def test_overdue_task_escalates_to_dispatch(env):
    s = env["settings"]
    got, _, c = _subscribe(s, "t-air", "field/t-air/tasks")
    try:
        task = _task(["air_inspection"], due_in_s=1.5)
        await _publish(env, task)

        async def overdue():
            return _rows(
                env["db_url"],
                "SELECT recipient FROM deliveries WHERE subject_id = %s AND tier = 1",
                task.task_id,
            )

        rows = await async_wait_for(overdue, 30, what="deadline escalation")
        assert {r[0] for r in rows} == {"t-disp", "t-air"}

        async def pushed():
            return [
                m
                for m in got
                if task.task_id in m.payload.decode()
                and "OVERDUE" not in m.payload.decode()
                and "逾期" in m.payload.decode()
            ]

        await async_wait_for(pushed, 30, what="overdue push to the assignee (zh)")
    finally:
        c.loop_stop()
        c.disconnect()


async def test_a_task_update_kafka_refused_is_published_later_from_the_outbox(env):
    """Task status updates were published after the offset commit: a Kafka timeout (or a crash) there lost them for
    good, the inbox having claimed their event. They are now written to an outbox in the change's transaction and
    published from it: refused once, the update is still pending, and the next round publishes it, once."""
    from aiokafka import AIOKafkaConsumer

    from schemas.tasks import FieldTaskUpdate

    svc = env["svc"]
    task_id = f"task-{secrets.token_hex(4)}"
    update = FieldTaskUpdate(task_id=task_id, status="assigned", assignee="w-li", at=datetime.now(UTC))
    async with svc.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
        from shared.notify import repository

        await repository.add_to_outbox(cur, svc._outbox_rows([update]))  # noqa: SLF001
    real = svc.producer.send_and_wait
    calls = []

    async def refuse(*a, **kw):
        calls.append(a)
        raise TimeoutError("Kafka did not answer")

    svc.producer.send_and_wait = refuse
    try:
        # (the service's own timers publish the outbox too: whichever round tried first was refused)
        await svc.publish_outbox()
        await async_wait_for(lambda: _async_true(calls), 10, what="a refused publish")
        pending = _rows(env["db_url"], "SELECT count(*) FROM notify_outbox WHERE published_at IS NULL AND "
                        "convert_from(key, 'UTF8') = %s", task_id)[0][0]
        assert pending == 1
    finally:
        svc.producer.send_and_wait = real

    async def published():
        n = _rows(env["db_url"], "SELECT count(*) FROM notify_outbox WHERE published_at IS NOT NULL AND "
                  "convert_from(key, 'UTF8') = %s", task_id)[0][0]
        return n or (await svc.publish_outbox() and None)

    await async_wait_for(published, 30, what="the update published from the outbox")
    consumer = AIOKafkaConsumer(env["topics"]["updates"], bootstrap_servers=svc.s.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        got = []
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                got += [json.loads(r.value) for r in recs if r.key == task_id.encode()]
            if got:
                break
    finally:
        await consumer.stop()
    assert len(got) == 1 and got[0]["payload"]["status"] == "assigned" and got[0]["event_id"].startswith("task-update-")


async def _async_true(x):
    return x or None


async def test_a_task_given_back_to_someone_who_had_it_is_pushed_to_them_again(env):
    """Every assignment push had the same idempotency key per person (round 0): a task given to t-air, then to
    someone else, then back to t-air sent t-air's phone nothing the second time; likewise the dispatcher heard
    nothing the second time a task was left with nobody. Each assignment, and each time a task is left open, is
    now a round of its own."""
    task = _task(["air_inspection"])  # t-air is the only one with the skill
    await _publish(env, task)
    assert (await _state(env, task.task_id, "assigned"))[1] == "t-air"
    http = env["http"]
    disp, air = await _login(env, "t-disp"), await _login(env, "t-air")
    for _ in range(2):
        r = await http.post(f"/api/tasks/{task.task_id}/reject", headers=air, json={"reason": "van broken down"})
        assert r.json()["status"] == "open", r.text  # nobody else qualified: the dispatcher is told
        r = await http.post(f"/api/tasks/{task.task_id}/assign", headers=disp, json={"person_id": "t-air"})
        assert r.json()["assignee"] == "t-air", r.text
    r = await http.post(f"/api/tasks/{task.task_id}/assign", headers=disp, json={"person_id": "t-near"})
    r = await http.post(f"/api/tasks/{task.task_id}/assign", headers=disp, json={"person_id": "t-air"})
    assert r.json()["assignee"] == "t-air", r.text
    pushes = dict(_rows(env["db_url"], "SELECT recipient, count(*) FROM deliveries WHERE subject_id = %s"
                        " GROUP BY recipient", task.task_id))
    assert pushes == {"t-air": 4, "t-disp": 2, "t-near": 1}

    async def all_sent():
        r = _rows(env["db_url"], "SELECT count(*) FILTER (WHERE status = 'sent'), count(*) FROM deliveries"
                  " WHERE subject_id = %s", task.task_id)[0]
        return r[0] == r[1] or None

    await async_wait_for(all_sent, 30, what="every push of the task sent")
