"""The dispatcher console in real headless Chromium: login, live alert list, the acknowledge button."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import notify_console_harness as harness
import psycopg
import pytest
import pytest_asyncio
import yaml

from schemas.alerts import GeoPoint
from schemas.tasks import FieldTask
from shared.notify.domain.auth import hash_password

pytestmark = [pytest.mark.stack, pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

PW = "console-test-pw"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(db_url, stack_env, tmp_path_factory):
    from aiokafka import AIOKafkaProducer

    from shared.notify.handlers import NotifyService
    from shared.notify.testing import ServiceRunner, create_topics, delete_topics
    from shared.service import Readiness

    h = hash_password(PW)
    roster = {
        "people": [
            {"id": "c-disp", "name": "调度员甲", "roles": ["dispatcher"], "password_hash": h},
            {"id": "c-view", "name": "Viewer", "language": "en", "roles": ["viewer"], "password_hash": h},
            {
                "id": "c-field",
                "name": "外勤乙",
                "roles": ["field_staff"],
                "skills": ["drain"],
                "lat": 30.25,
                "lon": 120.15,
                "password_hash": h,
            },
        ]
    }
    routing = {
        "timezone": "UTC",
        "group_window_s": 0,
        "rules": [
            {"name": "all", "tiers": [{"recipients": ["c-disp"], "channels": ["mqtt"], "ack_timeout_s": 600}]}
        ],
        "tasks": {"channels": ["mqtt"], "deadline_channels": ["mqtt"]},
    }
    d = tmp_path_factory.mktemp("console")
    (d / "roster.yaml").write_text(yaml.safe_dump(roster, allow_unicode=True))
    (d / "routing.yaml").write_text(yaml.safe_dump(routing))
    tag = secrets.token_hex(4)
    topics = {k: f"test.notify.{tag}.{k}" for k in ("alerts", "tasks", "updates")}
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    await create_topics(bootstrap, list(topics.values()))
    s = harness.settings(db_url, d, tag, topics, notify_session_secret="console-" + tag)
    svc = NotifyService(s, Readiness("db", "kafka", "channels"))
    runner = await ServiceRunner(svc).start()
    url, http_task, server = await harness.serve(svc)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    yield {"url": url, "producer": producer, "topics": topics, "db_url": db_url}
    await producer.stop()
    server.should_exit = True
    await http_task
    await runner.stop()
    await delete_topics(bootstrap, list(topics.values()))


async def _publish(c, topic_key, payload, event_type):
    from shared.notify.testing import encode_event

    await c["producer"].send_and_wait(c["topics"][topic_key], encode_event(event_type, payload))


async def _login(page, url, user):
    await page.goto(url + "/")
    await page.fill("#username", user)
    await page.fill("#password", PW)
    await page.click("#login-button")
    await page.wait_for_selector("#app:not([hidden])", timeout=30000)


async def test_dispatcher_acknowledges_in_the_browser_and_it_is_audited(console):
    from playwright.async_api import async_playwright

    alert = harness.flood_alert()
    task = FieldTask(
        task_id=f"task-{secrets.token_hex(4)}",
        kind="inspect_drain",
        domain="water",
        priority="normal",
        title_zh="检查排水口",
        title_en="Inspect the drain",
        description_zh="清理堵塞。",
        description_en="Clear the blockage.",
        location=GeoPoint(lat=30.24, lon=120.15),
        required_skills=["drain"],
        created_at=datetime.now(UTC),
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(console["url"] + "/")
            await page.fill("#username", "c-disp")
            await page.fill("#password", "wrong")
            await page.click("#login-button")
            await page.wait_for_selector("#login-error:has-text('登录失败')", timeout=30000)

            await _login(page, console["url"], "c-disp")
            await _publish(console, "alerts", alert, "alert")
            await _publish(console, "tasks", task, "field_task")
            row = f"tr[data-alert='{alert.alert_id}']"
            await page.wait_for_selector(
                f"{row} >> text=低洼地区内涝风险", timeout=60000
            )  # arrived live over SSE
            await page.wait_for_selector(f".card[data-task='{task.task_id}']", timeout=60000)
            assert (
                await page.locator("#map circle").count() >= 1
                and await page.locator("#map rect").count() >= 1
            )
            await page.click(f"{row} button.ack")
            await page.wait_for_selector(f"{row} td.status:has-text('acknowledged')", timeout=30000)

            with psycopg.connect(console["db_url"]) as c:
                status, by = c.execute(
                    "SELECT status, acknowledged_by FROM alerts WHERE alert_id = %s", (alert.alert_id,)
                ).fetchone()
                audit = c.execute(
                    "SELECT actor, role, action FROM audit_log WHERE subject = %s",
                    (f"alert:{alert.alert_id}",),
                ).fetchall()
                esc = c.execute(
                    "SELECT state FROM notify_escalations WHERE alert_id = %s", (alert.alert_id,)
                ).fetchone()[0]
            assert (status, by) == ("acknowledged", "c-disp")
            assert audit == [("c-disp", "dispatcher", "acknowledge")]
            assert esc == "acknowledged"

            # a viewer sees the list but gets no buttons; field staff see only their own tasks, no alerts
            viewer = await browser.new_page()
            await _login(viewer, console["url"], "c-view")
            await viewer.wait_for_selector(row, timeout=60000)
            assert await viewer.locator(f"{row} button").count() == 0
            field = await browser.new_page()
            await _login(field, console["url"], "c-field")
            await field.wait_for_selector(f".card[data-task='{task.task_id}']", timeout=60000)
            assert await field.locator("tr[data-alert]").count() == 0
        finally:
            await browser.close()
