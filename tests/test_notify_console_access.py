"""Who sees what through the console's API: recipients' addresses, and roles withdrawn in the roster."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime

import httpx
import notify_console_harness as harness
import pytest
import pytest_asyncio
import yaml

from schemas.alerts import GeoPoint
from shared.notify.domain.auth import hash_password

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="module")]

PW = "console-access-pw"
PHONE = "+8613900000007"
H = hash_password(PW)


def _roster(duty_roles: list[str]) -> dict:
    return {
        "people": [
            {"id": "c-disp", "name": "调度员甲", "roles": ["dispatcher"], "phone": PHONE, "password_hash": H},
            {"id": "c-view", "name": "Viewer", "language": "en", "roles": ["viewer"], "password_hash": H},
            {"id": "c-admin", "name": "管理员", "roles": ["admin"], "password_hash": H},
            {"id": "c-duty", "name": "值班员丙", "roles": duty_roles, "password_hash": H},
        ]
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(db_url, stack_env, tmp_path_factory):
    from aiokafka import AIOKafkaProducer

    from shared.notify.handlers import NotifyService
    from shared.notify.testing import HttpReceiver, ServiceRunner, create_topics, delete_topics
    from shared.service import Readiness

    # the SMS provider refuses the number, so the delivery row keeps the address and an error quoting it
    sms = await HttpReceiver(status=400).start()
    routing = {
        "timezone": "UTC",
        "group_window_s": 0,
        "rules": [
            {"name": "all", "tiers": [{"recipients": ["c-disp"], "channels": ["sms"], "ack_timeout_s": 600}]}
        ],
        "tasks": {"channels": ["sms"], "deadline_channels": ["sms"]},
    }
    d = tmp_path_factory.mktemp("console-access")
    (d / "roster.yaml").write_text(yaml.safe_dump(_roster(["dispatcher"]), allow_unicode=True))
    (d / "routing.yaml").write_text(yaml.safe_dump(routing))
    tag = secrets.token_hex(4)
    topics = {k: f"test.notify.{tag}.{k}" for k in ("alerts", "tasks", "updates")}
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    await create_topics(bootstrap, list(topics.values()))
    s = harness.settings(db_url, d, tag, topics, notify_sms_url=sms.url,
                         notify_session_secret="console-access-" + tag)
    svc = NotifyService(s, Readiness("db", "kafka", "channels"))
    runner = await ServiceRunner(svc).start()
    url, http_task, server = await harness.serve(svc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    yield {"url": url, "producer": producer, "topics": topics, "settings": s, "dir": d}
    await producer.stop()
    server.should_exit = True
    await http_task
    await runner.stop()
    await sms.close()
    await delete_topics(bootstrap, list(topics.values()))


async def _raise_alert(c) -> str:
    from shared.notify.testing import encode_event

    alert = harness.flood_alert()
    await c["producer"].send_and_wait(c["topics"]["alerts"], encode_event("alert", alert))
    return alert.alert_id


async def _login(http: httpx.AsyncClient, user: str) -> tuple[str, str]:
    r = await http.post("/api/login", json={"username": user, "password": PW})
    assert r.status_code == 200, r.text
    return r.json()["token"], r.json()["user"]["role"]


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def test_a_viewer_sees_who_was_notified_but_not_their_phone_number(console):
    """Before, the alert detail gave a viewer every delivery row as stored, with the recipient's phone number
    (and the provider's refusal quoting it). Now a viewer gets the deliveries without the address, in the
    error text too; dispatchers and admins, who need to reach people, still see it."""
    alert_id = await _raise_alert(console)
    async with httpx.AsyncClient(base_url=console["url"], timeout=30) as http:
        view, _ = await _login(http, "c-view")
        disp, _ = await _login(http, "c-disp")
        admin, _ = await _login(http, "c-admin")
        deadline = time.monotonic() + 60
        while True:
            r = await http.get(f"/api/alerts/{alert_id}", headers=_bearer(disp))
            if r.status_code == 200 and any(d["status"] == "dead" for d in r.json()["deliveries"]):
                break
            assert time.monotonic() < deadline, f"the alert's sms delivery never failed: {r.text}"
            await asyncio.sleep(0.2)
        (sent,) = r.json()["deliveries"]
        assert (sent["recipient"], sent["channel"], sent["address"]) == ("c-disp", "sms", PHONE)
        assert PHONE in sent["error"]
        r = await http.get(f"/api/alerts/{alert_id}", headers=_bearer(admin))
        assert r.json()["deliveries"][0]["address"] == PHONE

        r = await http.get(f"/api/alerts/{alert_id}", headers=_bearer(view))
        assert r.status_code == 200
        (seen,) = r.json()["deliveries"]
        assert (seen["recipient"], seen["channel"], seen["status"]) == ("c-disp", "sms", "dead")
        assert seen["address"] is None
        assert PHONE not in r.text
        assert "<address>" in seen["error"]


async def test_a_token_outlives_no_demotion_in_the_roster(console):
    """Before, the console believed the role written in the token: an operator demoted to viewer in the
    roster kept acknowledging alerts with the old token for its 12 h (the session secret survives a
    restart). Now that token is refused with 401 role_withdrawn, saying to log in again, and a fresh
    login gets the lower role, which may not acknowledge."""
    from shared.notify.handlers import NotifyService
    from shared.service import Readiness

    alert_id = await _raise_alert(console)
    async with httpx.AsyncClient(base_url=console["url"], timeout=30) as http:
        old, role = await _login(http, "c-duty")
        assert role == "dispatcher"
        deadline = time.monotonic() + 60
        while (await http.get(f"/api/alerts/{alert_id}", headers=_bearer(old))).status_code != 200:
            assert time.monotonic() < deadline, "the alert never reached the console"
            await asyncio.sleep(0.2)

    # the roster is edited and the service restarted with it, same session secret
    roster = console["dir"] / "roster-demoted.yaml"
    roster.write_text(yaml.safe_dump(_roster(["viewer"]), allow_unicode=True))
    svc = NotifyService(
        console["settings"].model_copy(update={"notify_roster": roster}), Readiness("db", "kafka", "channels")
    )
    await svc.start()
    url, http_task, server = await harness.serve(svc)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            r = await http.post(f"/api/alerts/{alert_id}/acknowledge", headers=_bearer(old))
            assert r.status_code == 401, r.text
            assert r.json()["error"] == "role_withdrawn" and "log in again" in r.json()["message"]
            r = await http.get("/api/me", headers=_bearer(old))
            assert r.status_code == 401

            fresh, role = await _login(http, "c-duty")
            assert role == "viewer"
            assert (await http.get("/api/me", headers=_bearer(fresh))).json()["role"] == "viewer"
            r = await http.post(f"/api/alerts/{alert_id}/acknowledge", headers=_bearer(fresh))
            assert (r.status_code, r.json()["error"]) == (403, "forbidden")
            assert (await http.get(f"/api/alerts/{alert_id}", headers=_bearer(fresh))).json()["status"] == "open"
    finally:
        server.should_exit = True
        await http_task
        await svc.close()


async def test_a_viewer_sees_a_rescue_task_without_the_worker_s_position(console):
    """Before, a viewer reading the field tasks (list, detail, live stream) got a worker's rescue task as stored:
    the injured worker's last position, their pseudonym and the incident map. Now a viewer gets that task
    without position, pseudonym, map or description; dispatchers, who send the crew, still get all of it.
    Other tasks are unchanged for viewers."""
    import json

    from schemas.tasks import FieldTask
    from shared.notify.testing import encode_event

    worker = f"w-{secrets.token_hex(4)}"
    lat, lon = 30.27123, 120.15517
    rescue = FieldTask(
        task_id=f"task-rescue-{secrets.token_hex(4)}", kind="respond_incident", domain="emergency",
        priority="urgent", title_zh=f"人员救援：跌倒 {worker}", title_en=f"Worker rescue: fall {worker}",
        description_zh=f"人员 {worker} 跌倒（警报）。立即前往。", description_en=f"Worker {worker}: fall (alarm). Go now.",
        location=GeoPoint(lat=lat, lon=lon), district="d04", required_skills=["incident_response"],
        created_at=datetime.now(UTC),
        evidence={"worker": worker, "kind": "fall", "zone_ids": ["pump-pit-3"], "position_known": True,
                  "map_png": "reports/maps/inc-fall.png"},
    )
    plain = FieldTask(
        task_id=f"task-drain-{secrets.token_hex(4)}", kind="inspect_drain", domain="water", priority="normal",
        title_zh="检查排水口", title_en="Inspect the drain", description_zh="清理堵塞。",
        description_en="Clear the blockage.", location=GeoPoint(lat=30.24, lon=120.15),
        required_skills=["drain"], created_at=datetime.now(UTC),
    )
    for t in (rescue, plain):
        await console["producer"].send_and_wait(console["topics"]["tasks"], encode_event("field_task", t))

    def hidden(text: str) -> bool:
        return worker not in text and str(lat) not in text and str(lon) not in text and "inc-fall" not in text

    async with httpx.AsyncClient(base_url=console["url"], timeout=30) as http:
        view, _ = await _login(http, "c-view")
        disp, _ = await _login(http, "c-disp")
        deadline = time.monotonic() + 60
        for t in (rescue, plain):
            while (await http.get(f"/api/tasks/{t.task_id}", headers=_bearer(disp))).status_code != 200:
                assert time.monotonic() < deadline, f"task {t.task_id} never reached the console"
                await asyncio.sleep(0.2)

        full = (await http.get(f"/api/tasks/{rescue.task_id}", headers=_bearer(disp))).json()
        assert (full["lat"], full["lon"]) == (lat, lon) and full["evidence"]["worker"] == worker
        rows = {r["task_id"]: r for r in (await http.get("/api/tasks", headers=_bearer(disp))).json()}
        assert rows[rescue.task_id]["lat"] == lat

        rows = {r["task_id"]: r for r in (await http.get("/api/tasks", headers=_bearer(view))).json()}
        seen = rows[rescue.task_id]
        assert (seen["lat"], seen["lon"], seen["evidence"]) == (None, None, {})
        assert seen["title_en"] == "Worker rescue: fall ***" and seen["priority"] == "urgent"
        assert hidden(json.dumps(seen, ensure_ascii=False))
        assert (rows[plain.task_id]["lat"], rows[plain.task_id]["description_en"]) == (30.24, "Clear the blockage.")

        r = await http.get(f"/api/tasks/{rescue.task_id}", headers=_bearer(view))
        assert r.status_code == 200 and r.json()["lat"] is None and hidden(r.text)

        async def streamed_tasks() -> str:
            async with http.stream("GET", "/api/stream", headers=_bearer(view)) as s:
                event = None
                async for line in s.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "tasks" and rescue.task_id in line:
                        return line[6:]
            raise AssertionError("the stream ended")

        data = await asyncio.wait_for(streamed_tasks(), timeout=30)
        (streamed,) = [t for t in json.loads(data) if t["task_id"] == rescue.task_id]
        assert streamed["lat"] is None and hidden(data)
