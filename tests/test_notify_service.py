"""The notification service end to end on the real stack: Kafka in, real channels out.

Webhook and SMS go to local HTTP stand-ins (outside parties), e-mail to a real aiosmtpd server,
MQTT to the real Mosquitto with its ACLs, Kafka to the real broker. Topics are private to this
module, the database is a throwaway one.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy

import psycopg
import pytest
import pytest_asyncio
import yaml

from schemas.alerts import Alert, GeoPoint
from shared.notify.domain.auth import webhook_signature
from tests.conftest import async_wait_for

pytestmark = [pytest.mark.stack, pytest.mark.asyncio(loop_scope="module")]

PEOPLE = ["t-ana", "t-ben", "t-sup", "t-fail"]


class Mailbox:
    """aiosmtpd handler keeping every message."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _roster(hook_ok: str, hook_fail: str) -> dict:
    return {
        "people": [
            {
                "id": "t-ana",
                "name": "安娜",
                "language": "zh",
                "roles": ["field_staff"],
                "email": "ana@test.example",
                "phone": "+8613000000001",
                "skills": ["water_repair"],
                "lat": 30.25,
                "lon": 120.15,
            },
            {
                "id": "t-ben",
                "name": "Ben",
                "language": "en",
                "roles": ["dispatcher"],
                "email": "ben@test.example",
                "phone": "+8613000000002",
            },
            {
                "id": "t-sup",
                "name": "Supervisor",
                "language": "en",
                "roles": ["admin"],
                "email": "sup@test.example",
            },
            {
                "id": "t-fail",
                "name": "Fails",
                "language": "en",
                "roles": ["viewer"],
                "email": "fail@test.example",
                "webhook_url": hook_fail,
            },
        ]
    }


ROUTING = {
    "timezone": "UTC",
    "dedup_window_s": 600,
    "group_window_s": 2,
    "rate_limit_per_minute": 1000,
    "max_attempts": 3,
    "retry_backoff_s": 1.0,
    "rules": [
        {
            "name": "all-channels",
            "match": {"domains": ["air"]},
            "repeat_until_ack": False,
            "tiers": [
                {
                    "recipients": ["t-ana", "t-ben"],
                    "channels": ["webhook", "email", "mqtt", "kafka", "sms"],
                    "ack_timeout_s": 3600,
                }
            ],
        },
        {
            "name": "escalate",
            "match": {"domains": ["water"]},
            "tiers": [
                {"recipients": ["t-ana"], "channels": ["email"], "ack_timeout_s": 2},
                {"recipients": ["t-sup"], "channels": ["email", "webhook"], "ack_timeout_s": 5},
            ],
        },
        {
            "name": "failing-webhook",
            "match": {"domains": ["weather"]},
            "repeat_until_ack": False,
            "tiers": [{"recipients": ["t-fail"], "channels": ["webhook"], "ack_timeout_s": 3600}],
        },
        {
            "name": "no-phone",  # t-sup has no phone in the roster: the sms delivery has nowhere to go
            "match": {"domains": ["emergency"]},
            "repeat_until_ack": False,
            "tiers": [{"recipients": ["t-sup"], "channels": ["sms", "email"], "ack_timeout_s": 3600}],
        },
        {
            "name": "rest",
            "match": {},
            "repeat_until_ack": False,
            "tiers": [{"recipients": ["t-ben"], "channels": ["email"], "ack_timeout_s": 3600}],
        },
    ],
    "tasks": {
        "channels": ["mqtt", "email", "webhook"],
        "unassigned_to": ["t-ben"],
        "deadline_escalate_to": ["t-sup"],
        "deadline_channels": ["email"],
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(db_url, stack_env, tmp_path_factory):
    from aiosmtpd.controller import Controller

    from shared.notify.app import provision_mqtt_users
    from shared.notify.domain.config import load_roster, load_routing
    from shared.notify.settings import NotifySettings
    from shared.notify.testing import HttpReceiver, create_topics, delete_topics

    tag = secrets.token_hex(4)
    topics = {k: f"test.notify.{tag}.{k}" for k in ("alerts", "tasks", "updates", "deliveries")}
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    await create_topics(bootstrap, list(topics.values()))
    hook, hook_fail, sms = HttpReceiver(), HttpReceiver(status=503), HttpReceiver()
    for r in (hook, hook_fail, sms):
        await r.start()
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    smtp.start()
    d = tmp_path_factory.mktemp("notify")
    (d / "roster.yaml").write_text(yaml.safe_dump(_roster(hook.url, hook_fail.url), allow_unicode=True))
    (d / "routing.yaml").write_text(yaml.safe_dump(ROUTING))
    settings = NotifySettings(
        db_url=db_url,
        notify_routing=d / "routing.yaml",
        notify_roster=d / "roster.yaml",
        notify_group=f"test-notify-{tag}",
        notify_alerts_topic=topics["alerts"],
        notify_tasks_topic=topics["tasks"],
        notify_task_updates_topic=topics["updates"],
        notify_deliveries_topic=topics["deliveries"],
        notify_webhook_url=hook.url,
        notify_webhook_secret="s3cret-" + tag,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=smtp.port,
        notify_sms_url=sms.url,
        notify_sms_token="tok",
        notify_poll_s=0.2,
    )
    roster = load_roster(settings.notify_roster)
    load_routing(settings.notify_routing, roster)
    provision_mqtt_users(roster)
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    yield {
        "settings": settings,
        "hook": hook,
        "hook_fail": hook_fail,
        "sms": sms,
        "mailbox": mailbox,
        "producer": producer,
        "topics": topics,
        "db_url": db_url,
        "bootstrap": bootstrap,
    }
    await producer.stop()
    smtp.stop()
    for r in (hook, hook_fail, sms):
        await r.close()
    await delete_topics(bootstrap, list(topics.values()))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(env):
    from shared.notify.handlers import NotifyService
    from shared.notify.testing import ServiceRunner

    runner = await ServiceRunner(NotifyService(env["settings"])).start()
    yield runner
    if not runner.stop_event.is_set():
        await runner.stop()


def _alert(domain: str, dedup_key: str, *, severity="major", kind=None, alert_id=None) -> Alert:
    kind = kind or f"kind_{secrets.token_hex(3)}"  # a group of its own unless a test wants a burst
    return Alert(
        alert_id=alert_id or f"al-{secrets.token_hex(5)}",
        domain=domain,
        kind=kind,
        severity=severity,
        title_zh="测试告警：河水污染",
        title_en="Test alert: river pollution",
        message_zh="请立即处理。",
        message_en="Please act now.",
        location=GeoPoint(lat=30.26, lon=120.16),
        district="d05",
        dedup_key=dedup_key,
        raised_at=datetime.now(UTC),
    )


async def _publish(env, alert: Alert, event_id: str | None = None) -> str:
    from shared.notify.testing import encode_event

    event_id = event_id or f"ev-{secrets.token_hex(6)}"
    await env["producer"].send_and_wait(
        env["topics"]["alerts"], encode_event("alert", alert, event_id=event_id), key=alert.dedup_key.encode()
    )
    return event_id


async def _publish_as_a_service(env, alert: Alert) -> None:
    """As a domain service publishes it (shared.stream.alert_output: event id, key and envelope)."""
    from shared.stream import alert_output

    out = alert_output(alert, source="test")
    await env["producer"].send_and_wait(env["topics"]["alerts"], out.value, key=out.key)


def _rows(db_url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(db_url) as c:
        return c.execute(sql, args).fetchall()


def _mqtt_listener(settings, person: str, topic: str):
    """Subscribe as `person` (their own broker login); returns (messages, suback codes, client)."""
    import paho.mqtt.client as mqtt

    got, suback, ready = [], [], threading.Event()
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{person}-{secrets.token_hex(3)}", protocol=mqtt.MQTTv5
    )
    c.username_pw_set(person, settings.mqtt_password("people", person))

    def on_connect(cl, ud, flags, rc, props):
        cl.subscribe(topic, qos=1)

    def on_subscribe(cl, ud, mid, rcs, props):
        suback.extend(rcs)
        ready.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = lambda cl, ud, m: got.append(m)
    c.connect(settings.mqtt_host, settings.mqtt_port)
    c.loop_start()
    assert ready.wait(30), f"no SUBACK for {person} on {topic}"
    return got, suback, c


async def test_alert_reaches_every_real_channel_in_each_recipients_language(env, service):
    settings = env["settings"]
    got, suback, client = _mqtt_listener(settings, "t-ana", "field/t-ana/#")
    from aiokafka import AIOKafkaConsumer

    deliveries_log = AIOKafkaConsumer(
        env["topics"]["deliveries"],
        bootstrap_servers=env["bootstrap"],
        auto_offset_reset="earliest",
        group_id=None,
    )
    await deliveries_log.start()
    try:
        alert = _alert("air", f"air:aqi:{secrets.token_hex(3)}")
        await _publish(env, alert)

        async def all_sent():
            rows = _rows(
                env["db_url"],
                "SELECT channel, recipient, status FROM deliveries WHERE subject_id = %s",
                alert.alert_id,
            )
            return rows if len(rows) == 10 and all(r[2] == "sent" for r in rows) else None

        rows = await async_wait_for(all_sent, 60, what="10 sent deliveries (2 people × 5 channels)")
        assert {(r[0], r[1]) for r in rows} == {
            (c, p) for c in ("webhook", "email", "mqtt", "kafka", "sms") for p in ("t-ana", "t-ben")
        }
        # webhook: signed with HMAC over timestamp.body, carrying the language of each recipient
        hooks = [r for r in env["hook"].requests if r.json()["subject_id"] == alert.alert_id]
        assert len(hooks) == 2
        for r in hooks:
            want = webhook_signature(settings.notify_webhook_secret, r.headers["x-cityops-timestamp"], r.body)
            assert hmac.compare_digest(r.headers["x-cityops-signature"], want)
            assert r.headers["idempotency-key"]
        by_lang = {r.json()["language"]: r.json() for r in hooks}
        assert "测试告警" in by_lang["zh"]["subject"] and "Test alert" in by_lang["en"]["subject"]
        # email: real SMTP server, Chinese to Ana, English to Ben
        mails = {tuple(rcpt): m for rcpt, m in env["mailbox"].messages if alert.alert_id in m.get_content()}
        assert "测试告警" in mails[("ana@test.example",)]["Subject"]
        assert "Test alert" in mails[("ben@test.example",)]["Subject"]
        assert "Acknowledge alert" in mails[("ben@test.example",)].get_content()
        # SMS stand-in got both numbers with the bearer token
        sms = [
            r
            for r in env["sms"].requests
            if r.json()["reference"]
            in {
                x[0]
                for x in _rows(
                    env["db_url"],
                    "SELECT idempotency_key FROM deliveries WHERE subject_id = %s AND channel = 'sms'",
                    alert.alert_id,
                )
            }
        ]
        assert {r.json()["to"] for r in sms} == {"+8613000000001", "+8613000000002"}
        assert all(r.headers["authorization"] == "Bearer tok" for r in sms)
        # MQTT: Ana's own phone topic, QoS 1
        await async_wait_for(
            lambda: _async([m for m in got if alert.alert_id in m.payload.decode()]),
            30,
            what="MQTT push to t-ana",
        )
        push = next(json.loads(m.payload) for m in got if alert.alert_id in m.payload.decode())
        assert push["language"] == "zh" and push["data"]["alert_id"] == alert.alert_id
        # Kafka: the delivery records for other city systems
        seen = set()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            for recs in (await deliveries_log.getmany(timeout_ms=500)).values():
                for rec in recs:
                    p = json.loads(rec.value)["payload"]
                    if p["subject_id"] == alert.alert_id:
                        seen.add(p["recipient"])
        assert seen == {"t-ana", "t-ben"}
    finally:
        await deliveries_log.stop()
        client.loop_stop()
        client.disconnect()


async def _async(v):
    return v


async def test_duplicates_yield_one_notification_and_redelivery_none(env, service):
    key = f"air:dup:{secrets.token_hex(3)}"
    first = _alert("air", key)
    ev = await _publish(env, first)
    await _publish(env, first, event_id=ev)  # Kafka redelivery of the very same event
    for _ in range(3):
        await _publish(env, _alert("air", key))  # the condition reported again by its source

    async def settled():
        r = _rows(env["db_url"], "SELECT repeat_count FROM alerts WHERE dedup_key = %s", key)
        return r if r and r[0][0] == 3 else None

    rows = await async_wait_for(settled, 60, what="3 repeats counted on one alert")
    assert len(rows) == 1
    n = _rows(
        env["db_url"],
        "SELECT count(*) FROM deliveries d JOIN alerts a ON a.alert_id = d.subject_id WHERE a.dedup_key = %s",
        key,
    )[0][0]
    assert n == 10  # one notification per person and channel, not 50
    hooks = [r for r in env["hook"].requests if r.json()["data"].get("dedup_key") == key]
    assert len(hooks) == 2


async def test_a_redelivered_copy_in_the_same_batch_is_not_a_repeat(env, service):
    """Kafka may hand the original and its redelivery over in one fetch: still one alert, no repeat counted."""
    from types import SimpleNamespace

    from shared.notify.testing import encode_event

    key = f"air:dup1:{secrets.token_hex(3)}"
    first = _alert("air", key)
    ev = f"ev-{secrets.token_hex(6)}"
    values = [encode_event("alert", first, event_id=ev)] * 2 + [
        encode_event("alert", _alert("air", key), event_id=f"ev-{secrets.token_hex(6)}") for _ in range(3)
    ]
    records = [
        SimpleNamespace(topic=env["topics"]["alerts"], partition=0, offset=10**9 + i, value=v)
        for i, v in enumerate(values)
    ]
    await service.svc.handle_records(records)
    rows = _rows(env["db_url"], "SELECT repeat_count FROM alerts WHERE dedup_key = %s", key)
    assert rows == [(3,)]
    n = _rows(
        env["db_url"],
        "SELECT count(*) FROM deliveries d JOIN alerts a ON a.alert_id = d.subject_id WHERE a.dedup_key = %s",
        key,
    )[0][0]
    assert n == 10


async def test_a_raise_and_its_clear_in_one_batch_leave_the_alert_resolved(env, service):
    """A catch-up batch can hold an alert and its clear: clears were applied before the batch's inserts, so the clear
    ended nothing and the alert stayed open, escalating until someone acknowledged it. A clear before a new raise of
    the same key still ends the old alert first."""
    from types import SimpleNamespace

    from shared.notify.testing import encode_event

    key, key2 = f"air:rc:{secrets.token_hex(3)}", f"air:cr:{secrets.token_hex(3)}"
    up = _alert("air", key)
    down = up.model_copy(update={"status": "cleared", "severity": "info"})
    old = _alert("air", key2)
    await _publish(env, old)

    async def stored():
        return _rows(env["db_url"], "SELECT alert_id FROM alerts WHERE dedup_key = %s", key2) or None

    await async_wait_for(stored, 30, what="the earlier alert stored")
    again = _alert("air", key2).model_copy(update={"raised_at": old.raised_at + timedelta(hours=3)})
    values = [encode_event("alert", a, event_id=f"ev-{secrets.token_hex(6)}") for a in
              (up, down, old.model_copy(update={"status": "cleared", "severity": "info"}), again)]
    records = [SimpleNamespace(topic=env["topics"]["alerts"], partition=0, offset=10**9 + 100 + i, value=v)
               for i, v in enumerate(values)]
    await service.svc.handle_records(records)
    assert _rows(env["db_url"], "SELECT status, resolved_at IS NOT NULL FROM alerts WHERE dedup_key = %s", key) == [
        ("resolved", True)]
    state = _rows(env["db_url"], "SELECT alert_id, resolved_at IS NOT NULL FROM alerts WHERE dedup_key = %s "
                  "ORDER BY raised_at", key2)
    assert state == [(old.alert_id, True), (again.alert_id, False)]


async def test_an_update_of_a_resolved_alert_pages_nobody_again(env, service):
    """An operator resolved an alert, then its source sent an update of it (same alert id): not an open alert, so it
    took the new-alert path, its deliveries were dropped by their idempotency keys, and yet every one was queued
    and sent again. Only the deliveries a batch inserts are sent."""
    from types import SimpleNamespace

    from shared.notify.testing import encode_event

    key = f"air:res:{secrets.token_hex(3)}"
    first = _alert("air", key, severity="critical")  # critical: no grouping or rate limit holds a send back
    await _publish(env, first)

    async def delivered():
        n = _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", first.alert_id)[0][0]
        return n or None

    n0 = await async_wait_for(delivered, 60, what="the alert's deliveries")
    with psycopg.connect(env["db_url"]) as c:
        c.execute("UPDATE alerts SET status = 'resolved', resolved_at = now() WHERE alert_id = %s", (first.alert_id,))
    update = first.model_copy(update={"status": "updated", "title_en": "Test alert: river pollution (refined)"})
    rec = SimpleNamespace(topic=env["topics"]["alerts"], partition=0, offset=10**9 + 200,
                          value=encode_event("alert", update, event_id=f"ev-{secrets.token_hex(6)}"))
    fresh, _ = await service.svc.handle_records([rec])
    assert fresh == []
    assert _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", first.alert_id)[0][0] == n0


async def test_a_delivery_whose_lease_ran_low_is_sent_only_by_whoever_holds_it(env, service):
    """A new delivery waiting for a free sender past its 60 s lease can be claimed again by the retry loop, which
    sends it too: twice to e-mail and MQTT, which do not deduplicate. Before sending, a row near the end of its
    lease is re-leased only if nobody took it meanwhile; one the retry loop re-leased is left to it."""
    from psycopg.rows import dict_row

    key = f"air:lease:{secrets.token_hex(3)}"
    alert = _alert("air", key, severity="critical")
    await _publish(env, alert)

    async def sent():
        r = _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s AND status = 'sent'",
                  alert.alert_id)[0][0]
        return r if r >= 2 else None

    await async_wait_for(sent, 60, what="the alert's deliveries sent")
    with psycopg.connect(env["db_url"], row_factory=dict_row) as c:
        a, b = c.execute("SELECT delivery_id FROM deliveries WHERE subject_id = %s ORDER BY delivery_id LIMIT 2",
                         (alert.alert_id,)).fetchall()
        # both "sending" with 5 s of lease left as this sender holds them; b was meanwhile re-leased by the retry loop
        c.execute("UPDATE deliveries SET status = 'sending', next_attempt_at = now() + interval '5 seconds' "
                  "WHERE delivery_id = ANY(%s)", ([a["delivery_id"], b["delivery_id"]],))
        rows = c.execute("SELECT * FROM deliveries WHERE delivery_id = ANY(%s) ORDER BY delivery_id",
                         ([a["delivery_id"], b["delivery_id"]],)).fetchall()
        c.execute("UPDATE deliveries SET next_attempt_at = now() + interval '60 seconds' WHERE delivery_id = %s",
                  (b["delivery_id"],))
    kept = await service.svc._still_ours([dict(r) for r in rows])  # noqa: SLF001
    assert [r["delivery_id"] for r in kept] == [a["delivery_id"]]
    lease = _rows(env["db_url"], "SELECT next_attempt_at - now() FROM deliveries WHERE delivery_id = %s",
                  a["delivery_id"])[0][0]
    assert lease > timedelta(seconds=30)  # renewed for the send
    with psycopg.connect(env["db_url"]) as c:  # leave them as sent, for the tests after this one
        c.execute("UPDATE deliveries SET status = 'sent', next_attempt_at = NULL WHERE delivery_id = ANY(%s)",
                  ([a["delivery_id"], b["delivery_id"]],))


async def test_an_updated_alert_refines_the_stored_one_without_notifying_again(env, service):
    """A leak alarm first, its candidate pipes an update later: the console shows the refinement, nobody is
    paged twice."""
    key = f"water:leak:{secrets.token_hex(3)}"
    first = _alert("water", key)
    await _publish(env, first)
    update = first.model_copy(update={"status": "updated", "raised_at": first.raised_at + timedelta(minutes=5),
                                      "alert_id": f"al-{secrets.token_hex(5)}", "title_en": "Leak near pipe P-223",
                                      "evidence": {"candidates": [{"pipe_id": "P-223", "score": 0.7}]}})
    await _publish(env, update)

    async def refined():
        r = _rows(env["db_url"], "SELECT alert_id, repeat_count, title_en, evidence FROM alerts WHERE dedup_key = %s",
                  key)
        return r if r and r[0][1] == 1 else None

    rows = await async_wait_for(refined, 60, what="the update counted on the first alert")
    assert len(rows) == 1 and rows[0][0] == first.alert_id
    assert rows[0][2] == "Leak near pipe P-223" and rows[0][3]["candidates"][0]["pipe_id"] == "P-223"
    n = _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", update.alert_id)[0][0]
    assert n == 0


async def test_an_alert_made_more_severe_is_stored_notified_and_escalated_anew_however_late(env, service):
    """A flood warning goes from blue to orange 40 minutes later (beyond the repeat window): the stored alert
    becomes orange and major, everyone on the rule hears about it again, with the new words. A later update that
    is no worse only refreshes the words. Published as the services publish them: one alert id for every version
    (the inbox must not take the orange version for a redelivery of the blue one)."""
    key = f"air:upgrade:{secrets.token_hex(3)}"
    blue = _alert("air", key, severity="minor").model_copy(update={"level": "blue", "title_en": "Flood warning BLUE"})
    await _publish_as_a_service(env, blue)

    def delivered(n):
        async def check():
            r = _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", blue.alert_id)[0][0]
            return r if r >= n else None
        return check

    await async_wait_for(delivered(1), 60, what="the blue warning delivered")
    await asyncio.sleep(3)
    first = _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", blue.alert_id)[0][0]
    orange = blue.model_copy(update={"status": "updated", "severity": "major", "level": "orange",
                                     "title_en": "Flood warning ORANGE", "raised_at": blue.raised_at + timedelta(minutes=40)})
    await _publish_as_a_service(env, orange)
    await async_wait_for(delivered(2 * first), 60, what="the orange warning delivered again")
    row = _rows(env["db_url"], "SELECT severity, level, title_en, status FROM alerts WHERE dedup_key = %s", key)
    assert row == [("major", "orange", "Flood warning ORANGE", "open")]
    upgraded = [r.json() for r in env["hook"].requests if r.json()["data"].get("alert_id") == blue.alert_id
                and r.json()["data"].get("severity") == "major"]
    assert upgraded and all(
        ("[UPGRADED, was MINOR, BLUE]" if u["language"] == "en" else "【预警升级，原为一般蓝色】") in u["subject"]
        for u in upgraded), upgraded
    # no worse: words refreshed, nobody notified
    calmer = orange.model_copy(update={"severity": "minor", "level": "blue", "title_en": "Flood warning easing",
                                       "raised_at": blue.raised_at + timedelta(minutes=90)})
    await _publish_as_a_service(env, calmer)

    async def refreshed():
        r = _rows(env["db_url"], "SELECT severity, level, title_en FROM alerts WHERE dedup_key = %s", key)
        return r if r and r[0][2] == "Flood warning easing" else None

    assert await async_wait_for(refreshed, 60, what="the calmer update folded in") == [
        ("major", "orange", "Flood warning easing")]
    await asyncio.sleep(3)
    assert _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", blue.alert_id)[0][0] == 2 * first


async def test_failing_channel_retries_with_backoff_then_dead_letters(env, service):
    alert = _alert("weather", f"weather:x:{secrets.token_hex(3)}")
    await _publish(env, alert)

    async def dead():
        r = _rows(
            env["db_url"],
            "SELECT status, attempts, error FROM deliveries WHERE subject_id = %s",
            alert.alert_id,
        )
        return r if r and r[0][0] == "dead" else None

    ((status, attempts, error),) = await async_wait_for(dead, 60, what="the delivery to be dead")
    assert attempts == 3 and "503" in error and "after 3 attempt" in error
    tries = [r for r in env["hook_fail"].requests if r.json()["subject_id"] == alert.alert_id]
    assert len(tries) == 3
    gaps = [b.at - a.at for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[0] >= 0.8 and gaps[1] > gaps[0], f"backoff 1 s then 2 s (±20 %): {gaps}"
    dl = _rows(
        env["db_url"],
        "SELECT reason_code, reason FROM dead_letters WHERE origin = %s",
        f"delivery:{_rows(env['db_url'], 'SELECT delivery_id FROM deliveries WHERE subject_id = %s', alert.alert_id)[0][0]}",
    )
    assert dl and dl[0][0] == "processing_error" and "503" in dl[0][1]
    # a recipient's address stays in the deliveries row: not in the (unrestricted) dead letter
    ((delivery, address),) = _rows(env["db_url"], "SELECT delivery_id, address FROM deliveries WHERE subject_id = %s"
                                   " AND status = 'dead'", alert.alert_id)
    original = bytes(_rows(env["db_url"], "SELECT original FROM dead_letters WHERE origin = %s",
                           f"delivery:{delivery}")[0][0])
    assert address and address.encode() not in original and address not in dl[0][1], original[:600]


async def test_poison_record_is_dead_lettered_and_service_keeps_going(env, service):
    await env["producer"].send_and_wait(env["topics"]["alerts"], b"{not json", key=b"x")
    bad = {"event_id": "ev-bad-" + secrets.token_hex(3), "type": "alert", "payload": {"alert_id": "x"}}
    await env["producer"].send_and_wait(env["topics"]["alerts"], json.dumps(bad).encode(), key=b"x")
    good = _alert("platform", f"p:{secrets.token_hex(3)}")
    await _publish(env, good)

    async def done():
        return _rows(
            env["db_url"],
            "SELECT status FROM deliveries WHERE subject_id = %s AND status = 'sent'",
            good.alert_id,
        )

    await async_wait_for(done, 60, what="the good alert after two poison records")
    reasons = _rows(
        env["db_url"],
        "SELECT reason_code, reason FROM dead_letters WHERE stage = 'notify' AND origin LIKE %s",
        f"kafka:{env['topics']['alerts']}%",
    )
    codes = {r[0] for r in reasons}
    assert {"malformed_json", "schema_violation"} <= codes
    assert any("fix the producer" in r[1] for r in reasons)


async def test_a_burst_of_one_group_goes_out_as_one_digest(env, service):
    kind = f"burst_{secrets.token_hex(3)}"
    burst = [_alert("platform", f"p:{kind}:{i}", kind=kind) for i in range(3)]
    for a in burst:
        await _publish(env, a)
    ids = [a.alert_id for a in burst]

    async def all_sent():
        r = _rows(
            env["db_url"],
            "SELECT subject_id, hold_reason, grouped_into, status FROM deliveries"
            " WHERE subject_id = ANY(%s) ORDER BY created_at, subject_id",
            ids,
        )
        return r if len(r) == 3 and all(x[3] == "sent" for x in r) else None

    rows = await async_wait_for(all_sent, 30, what="the burst to be sent")
    held = [r for r in rows if r[1] == "grouped"]
    assert len(held) >= 1 and len([r for r in rows if r[1] is None]) >= 1
    digests = [
        m
        for rcpt, m in env["mailbox"].messages
        if m["Subject"].startswith("[DIGEST]") and any(i in m.get_content() for i in ids)
    ]
    mails = [m for rcpt, m in env["mailbox"].messages if any(i in m.get_content() for i in ids)]
    # 3 alerts, fewer mails: the ones after the first arrived inside the window and were folded together
    assert len(mails) == 1 + (1 if len(held) >= 1 else 0)
    if len(held) >= 2:
        assert digests and f"[DIGEST] {len(held)} related alerts" in digests[0]["Subject"]
        assert len({r[2] for r in held if r[2]}) == 1


def _raw_alert(alert: Alert, event_id: str, **payload) -> bytes:
    """An alert envelope as json.dumps writes it, with payload fields set to what the schema lets through."""
    env = json.loads(alert.model_dump_json())
    env.update(payload)
    return json.dumps({"event_id": event_id, "type": "alert", "source": "test",
                       "occurred_at": datetime.now(UTC).isoformat(), "payload": env}).encode()


async def test_a_record_postgresql_refuses_is_dead_lettered_and_the_service_keeps_going(env, service):
    """An alert that passes the schema can still be refused by PostgreSQL: a NUL character in its text, NaN in its
    evidence (Python's json reads it, jsonb does not), a dedup key too long for its index. The batch's transaction
    failed, the consumer raised, the service stopped with the offset uncommitted, and every restart failed on the
    same batch: nothing was notified any more. Now NUL and NaN are dead letters when read (with where they are),
    any other refusal dead-letters that one record (the batch is applied again record by record), and the alerts
    around them are notified."""
    from tests.ingest_harness import collect, kafka_tail

    tail = await kafka_tail(env["bootstrap"], "cityops.deadletter.v1")
    try:
        first, last = _alert("platform", f"p:before:{secrets.token_hex(3)}"), _alert("platform", f"p:after:{secrets.token_hex(3)}")
        nul, nan, long_key = (_alert("platform", f"p:{n}:{secrets.token_hex(3)}") for n in ("nul", "nan", "long"))
        await _publish(env, first)
        for value in (
            _raw_alert(nul, f"ev-{secrets.token_hex(6)}", title_en="Pump station\u0000 7"),
            _raw_alert(nan, f"ev-{secrets.token_hex(6)}", evidence={"flow_m3h": float("nan")}),
            _raw_alert(long_key, f"ev-{secrets.token_hex(6)}", dedup_key="p:" + secrets.token_urlsafe(9000)),
        ):
            await env["producer"].send_and_wait(env["topics"]["alerts"], value, key=b"poison")
        await _publish(env, last)

        async def sent():
            r = _rows(env["db_url"], "SELECT DISTINCT subject_id FROM deliveries WHERE subject_id = ANY(%s) AND "
                      "status = 'sent'", [first.alert_id, last.alert_id])
            return r if len(r) == 2 else None

        await async_wait_for(sent, 60, what="the alerts before and after the refused ones notified")
        assert not service.task.done(), service.task
        assert not _rows(env["db_url"], "SELECT 1 FROM alerts WHERE alert_id = ANY(%s)",
                         [nul.alert_id, nan.alert_id, long_key.alert_id])
        letters = _rows(env["db_url"], "SELECT reason_code, reason, convert_from(original, 'UTF8') FROM dead_letters"
                        " WHERE stage = 'notify' AND origin LIKE %s", f"kafka:{env['topics']['alerts']}%")
        by_alert = {a.alert_id: [(c, r) for c, r, o in letters if a.alert_id in o] for a in (nul, nan, long_key)}
        ((code, reason),) = by_alert[nul.alert_id]
        assert code == "schema_violation" and "payload.title_en holds a NUL character" in reason
        ((code, reason),) = by_alert[nan.alert_id]
        assert code == "non_finite_value" and "payload.evidence.flow_m3h is nan" in reason
        ((code, reason),) = by_alert[long_key.alert_id]
        assert code == "processing_error" and "PostgreSQL refused to store this alert" in reason
        assert all("fix the producer" in r for rs in by_alert.values() for _, r in rs)
        ours = (nul.alert_id, nan.alert_id, long_key.alert_id)
        on_topic = await collect(
            tail, lambda e: any(i in base64.b64decode(e["payload"]["original_b64"]).decode() for i in ours), 3, 30)
        assert {e["payload"]["reason_code"] for e in on_topic} == {"schema_violation", "non_finite_value",
                                                                   "processing_error"}
    finally:
        await tail.stop()


async def test_a_refused_record_leaves_the_rest_of_its_batch_applied_once(env, service):
    """Within one fetched batch: the record PostgreSQL refuses is rolled back alone; the alert and the field task
    around it are stored and planned once, and its dead letter names the record to fix."""
    from types import SimpleNamespace

    from schemas.tasks import FieldTask
    from shared.notify.testing import encode_event

    good, bad = _alert("platform", f"p:g:{secrets.token_hex(3)}"), _alert("platform", f"p:b:{secrets.token_hex(3)}")
    task = FieldTask(task_id=f"task-{secrets.token_hex(4)}", kind="inspect_equipment", domain="water", priority="normal",
                     title_zh="检查水泵", title_en="Inspect pump", description_zh="振动偏高。", description_en="Vibration high.",
                     location=GeoPoint(lat=30.25, lon=120.15), district="d05", created_at=datetime.now(UTC))
    bad_event = f"ev-{secrets.token_hex(6)}"
    records = [SimpleNamespace(topic=topic, partition=0, offset=10**9 + 300 + i, value=v) for i, (topic, v) in enumerate([
        (env["topics"]["alerts"], encode_event("alert", good, event_id=f"ev-{secrets.token_hex(6)}")),
        (env["topics"]["alerts"], _raw_alert(bad, bad_event, dedup_key="p:" + secrets.token_urlsafe(9000))),
        (env["topics"]["tasks"], encode_event("field_task", task, event_id=f"ev-{secrets.token_hex(6)}")),
    ])]
    fresh, updates = await service.svc.handle_records(records)
    assert {r["subject_id"] for r in fresh} == {good.alert_id, task.task_id}
    assert [(u.task_id, u.status) for u in updates] == [(task.task_id, "assigned")]
    assert _rows(env["db_url"], "SELECT alert_id FROM alerts WHERE alert_id = ANY(%s)",
                 [good.alert_id, bad.alert_id]) == [(good.alert_id,)]
    (reason,) = _rows(env["db_url"], "SELECT reason FROM dead_letters WHERE origin = %s",
                      f"kafka:{env['topics']['alerts']}/0@{10**9 + 301}")[0]
    assert bad_event in reason and "ProgramLimitExceeded" in reason
    again, _ = await service.svc.handle_records(records)  # redelivered: nothing new, nothing twice
    assert again == []
    assert _rows(env["db_url"], "SELECT count(*) FROM dead_letters WHERE origin = %s",
                 f"kafka:{env['topics']['alerts']}/0@{10**9 + 301}") == [(1,)]
    assert not _rows(env["db_url"], "SELECT 1 FROM notify_inbox WHERE event_id = %s", bad_event)


async def test_an_alert_raised_and_refined_in_one_batch_keeps_the_refinement(env, service):
    """After an outage a leak alarm and its refined version (candidate pipes) arrive in one catch-up batch. The
    refinement was skipped for an alert inserted by the same batch, so the stored alert kept the first words for
    good. Now it is folded in as it is when it comes later, and nobody is notified twice."""
    from types import SimpleNamespace

    from shared.notify.testing import encode_event

    key = f"platform:leak:{secrets.token_hex(3)}"
    first = _alert("platform", key)
    update = first.model_copy(update={"status": "updated", "raised_at": first.raised_at + timedelta(hours=2),
                                      "title_en": "Leak near pipe P-223",
                                      "evidence": {"candidates": [{"pipe_id": "P-223", "score": 0.7}]}})
    records = [SimpleNamespace(topic=env["topics"]["alerts"], partition=0, offset=10**9 + 400 + i,
                               value=encode_event("alert", a, event_id=f"ev-{secrets.token_hex(6)}"))
               for i, a in enumerate((first, update))]
    await service.svc.handle_records(records)
    rows = _rows(env["db_url"], "SELECT alert_id, repeat_count, title_en, evidence FROM alerts WHERE dedup_key = %s",
                 key)
    assert len(rows) == 1 and rows[0][:3] == (first.alert_id, 1, "Leak near pipe P-223")
    assert rows[0][3]["candidates"][0]["pipe_id"] == "P-223"
    assert _rows(env["db_url"], "SELECT count(*) FROM deliveries WHERE subject_id = %s", first.alert_id) == [(1,)]


async def test_a_delivery_with_no_address_is_dead_lettered_with_what_to_set(env, service):
    """A rule sends SMS to someone with no phone in the roster: the delivery was marked dead (no_address) and left
    there, though given-up deliveries go to the dead-letter topic and table. Now it is a dead letter too, saying
    what to set, and the other channel still reaches them."""
    alert = _alert("emergency", f"emergency:x:{secrets.token_hex(3)}")
    await _publish(env, alert)

    async def mailed():
        r = _rows(env["db_url"], "SELECT channel, status, hold_reason, delivery_id FROM deliveries WHERE "
                  "subject_id = %s ORDER BY channel", alert.alert_id)
        return r if len(r) == 2 and r[0][1] == "sent" else None

    (email, sms) = await async_wait_for(mailed, 60, what="the alert's e-mail sent")
    assert email[0] == "email" and sms[:3] == ("sms", "dead", "no_address")
    ((code, reason, original),) = _rows(env["db_url"], "SELECT reason_code, reason, original FROM dead_letters "
                                        "WHERE origin = %s", f"delivery:{sms[3]}")
    assert code == "processing_error"
    assert "no address for t-sup" in reason and "set phone for t-sup in" in reason and "roster.yaml" in reason
    assert alert.alert_id in bytes(original).decode()


async def test_a_rescue_task_reaches_the_city_webhook_without_the_workers_pseudonym_or_position(env, service):
    """Field staff have no webhook of their own, so their task pushes went to the city's common webhook whole: a
    worker rescue task's description (naming the worker's pseudonym) and the worker's last position left the
    internal topic. The common webhook now gets the task without them; the crew's own e-mail keeps both."""
    from schemas.tasks import FieldTask
    from shared.notify.testing import encode_event

    pid = "w-" + secrets.token_hex(6)
    task = FieldTask(
        task_id=f"task-{secrets.token_hex(4)}", kind="respond_incident", domain="emergency", priority="urgent",
        title_zh="人员救援：倒地", title_en="Worker rescue: man down",
        description_zh=f"人员 {pid} 倒地（严重）。立即前往。", description_en=f"Worker {pid}: man down (severe). Go now.",
        location=GeoPoint(lat=30.271234, lon=120.161234), district="d05", created_at=datetime.now(UTC),
        evidence={"worker": pid, "kind": "man_down"},
    )
    await env["producer"].send_and_wait(env["topics"]["tasks"], encode_event("field_task", task),
                                        key=task.task_id.encode())

    async def hooked():
        return [r for r in env["hook"].requests if r.json().get("subject_id") == task.task_id] or None

    (hook,) = await async_wait_for(hooked, 60, what="the task on the city webhook")
    assert pid not in hook.body.decode() and "30.27123" not in hook.body.decode() and "120.16123" not in hook.body.decode()
    body = hook.json()
    assert body["data"]["lat"] is None and body["data"]["description_en"] is None
    assert body["data"]["district"] == "d05" and body["data"]["assignee"] == "t-ana"
    assert "此任务涉及人员" in body["body"]  # t-ana reads Chinese

    async def mailed():
        return [m for rcpt, m in env["mailbox"].messages if rcpt == ["ana@test.example"]
                and task.task_id in m.get_content()] or None

    (mail,) = await async_wait_for(mailed, 60, what="the task e-mailed to the crew")
    assert pid in mail.get_content() and "30.27123" in mail.get_content()


async def test_unacknowledged_alert_escalates_across_a_restart(env, service):
    from shared.notify.handlers import NotifyService
    from shared.notify.testing import ServiceRunner

    alert = _alert("water", f"water:leak:{secrets.token_hex(3)}", kind="leak")
    await _publish(env, alert)

    async def tier0():
        return _rows(
            env["db_url"],
            "SELECT 1 FROM deliveries WHERE subject_id = %s AND tier = 0 AND status = 'sent'",
            alert.alert_id,
        )

    await async_wait_for(tier0, 60, what="tier-0 notification")
    await service.stop()  # the process goes away before the escalation is due
    due = _rows(
        env["db_url"], "SELECT next_due_at, state FROM notify_escalations WHERE alert_id = %s", alert.alert_id
    )[0]
    assert due[1] == "active"

    async def past_due():
        return datetime.now(UTC) > due[0] + timedelta(seconds=0.5)

    await async_wait_for(past_due, 10, what="the escalation time to pass while the service is down")
    assert not _rows(
        env["db_url"], "SELECT 1 FROM deliveries WHERE subject_id = %s AND tier = 1", alert.alert_id
    )

    restarted = await ServiceRunner(NotifyService(env["settings"])).start()
    try:

        async def tier1():
            r = _rows(
                env["db_url"],
                "SELECT recipient, channel, status FROM deliveries WHERE subject_id = %s"
                " AND tier = 1 AND round = 0",
                alert.alert_id,
            )
            return r if len(r) == 2 and all(x[2] == "sent" for x in r) else None

        rows = await async_wait_for(tier1, 30, what="tier-1 escalation after the restart")
        assert {(r[0], r[1]) for r in rows} == {("t-sup", "email"), ("t-sup", "webhook")}
        mail = [
            m
            for rcpt, m in env["mailbox"].messages
            if rcpt == ["sup@test.example"] and alert.alert_id in m.get_content()
        ]
        assert mail and "ESCALATED" in mail[0]["Subject"]

        async with await psycopg.AsyncConnection.connect(env["db_url"]) as conn:
            from shared.notify import repository

            acked = await repository.acknowledge_alert(conn, alert.alert_id, "t-ben", "dispatcher")
        assert acked["escalation_state"] == "acknowledged" and acked["status"] == "acknowledged"
        after = _rows(
            env["db_url"], "SELECT next_due_at FROM notify_escalations WHERE alert_id = %s", alert.alert_id
        )[0][0]

        async def quiet_period():
            return datetime.now(UTC) > after + timedelta(seconds=1)

        await async_wait_for(quiet_period, 10, what="past the next escalation time")
        await restarted.svc.run_timers_once()
        assert not _rows(
            env["db_url"], "SELECT 1 FROM deliveries WHERE subject_id = %s AND round > 0", alert.alert_id
        )
        audit = _rows(
            env["db_url"], "SELECT actor, action FROM audit_log WHERE subject = %s", f"alert:{alert.alert_id}"
        )
        assert audit == [("t-ben", "acknowledge")]

        from shared.notify.repository import delivery_summary

        with psycopg.connect(env["db_url"]) as c:
            summary = delivery_summary(c)
        esc = [e for e in summary["escalations"] if e["alert_id"] == alert.alert_id]
        assert (
            esc
            and esc[0]["tier"] == 1
            and esc[0]["state"] == "acknowledged"
            and esc[0]["escalated_deliveries"] == 2
        )
        by_channel = {c["channel"]: c for c in summary["channels"]}
        assert set(by_channel) == {"webhook", "email", "mqtt", "kafka", "sms"}
        assert (
            by_channel["email"]["sent"] >= 4
            and 0 < by_channel["email"]["p50_ms"] <= by_channel["email"]["p99_ms"]
        )
        assert by_channel["webhook"]["dead"] >= 1  # the failing receiver's delivery
    finally:
        await restarted.stop()
