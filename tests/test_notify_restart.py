"""`cityops notify serve` as a real process, killed with SIGKILL between tiers: the escalation still fires."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy

import httpx
import psycopg
import pytest
import yaml

from schemas.alerts import Alert
from shared.settings import PROJECT_ROOT
from tests.conftest import wait_for

pytestmark = [pytest.mark.stack]


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content, policy=policy.default)))
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "notify", "serve", "--port", str(port), "--no-provision"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def ready():
        if proc.poll() is not None:
            raise AssertionError(
                f"notify serve exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
            )
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 90, 0.5, what="notify serve /readyz")
    return proc


def test_escalation_fires_after_the_process_is_killed(db_url, stack_env, tmp_path):
    from aiosmtpd.controller import Controller

    from shared.notify.testing import create_topics, delete_topics, encode_event

    tag = secrets.token_hex(4)
    alerts, tasks = f"test.notify.{tag}.alerts", f"test.notify.{tag}.tasks"
    bootstrap = stack_env["CITYOPS_KAFKA_BOOTSTRAP"]
    asyncio.run(create_topics(bootstrap, [alerts, tasks]))
    mailbox = Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=_free_port())
    smtp.start()
    (tmp_path / "roster.yaml").write_text(
        yaml.safe_dump(
            {
                "people": [
                    {
                        "id": "r-desk",
                        "name": "Desk",
                        "language": "en",
                        "roles": ["dispatcher"],
                        "email": "desk@t.example",
                    },
                    {
                        "id": "r-boss",
                        "name": "主任",
                        "language": "zh",
                        "roles": ["admin"],
                        "email": "boss@t.example",
                    },
                ]
            },
            allow_unicode=True,
        )
    )
    (tmp_path / "routing.yaml").write_text(
        yaml.safe_dump(
            {
                "timezone": "UTC",
                "rules": [
                    {
                        "name": "all",
                        "tiers": [
                            {"recipients": ["r-desk"], "channels": ["email"], "ack_timeout_s": 300},
                            {"recipients": ["r-boss"], "channels": ["email"], "ack_timeout_s": 300},
                        ],
                    }
                ],
                "tasks": {"channels": ["email"], "deadline_channels": ["email"]},
            }
        )
    )
    env = {
        **os.environ,
        "CITYOPS_DB_URL": db_url,
        "CITYOPS_NOTIFY_ROUTING": str(tmp_path / "routing.yaml"),
        "CITYOPS_NOTIFY_ROSTER": str(tmp_path / "roster.yaml"),
        "CITYOPS_NOTIFY_GROUP": f"test-notify-{tag}",
        "CITYOPS_NOTIFY_ALERTS_TOPIC": alerts,
        "CITYOPS_NOTIFY_TASKS_TOPIC": tasks,
        "CITYOPS_NOTIFY_SMTP_PORT": str(smtp.port),
        "CITYOPS_NOTIFY_POLL_S": "0.2",
        # 300 s × 0.02 = 6 s between tiers
        "CITYOPS_NOTIFY_ESCALATION_SCALE": "0.02",
    }
    port = _free_port()
    proc = _start(env, port)
    try:
        alert = Alert(
            alert_id=f"al-{tag}",
            domain="emergency",
            kind="man_down",
            severity="major",
            title_zh="人员倒地",
            title_en="Man down",
            message_zh="请立即前往。",
            message_en="Go now.",
            dedup_key=f"emergency:man_down:{tag}",
            raised_at=datetime.now(UTC),
        )

        async def publish():
            from aiokafka import AIOKafkaProducer

            p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await p.start()
            await p.send_and_wait(alerts, encode_event("alert", alert))
            await p.stop()

        asyncio.run(publish())

        def rows(sql):
            with psycopg.connect(db_url) as c:
                return c.execute(sql, (alert.alert_id,)).fetchall()

        wait_for(
            lambda: rows("SELECT 1 FROM deliveries WHERE subject_id = %s AND tier = 0 AND status = 'sent'"),
            60,
            what="tier 0 sent by the first process",
        )
        proc.send_signal(signal.SIGKILL)  # no shutdown code runs
        proc.wait(10)
        due = rows("SELECT next_due_at FROM notify_escalations WHERE alert_id = %s AND state = 'active'")[0][
            0
        ]
        wait_for(lambda: datetime.now(UTC) > due, 10, what="the escalation to fall due while nothing runs")
        assert not rows("SELECT 1 FROM deliveries WHERE subject_id = %s AND tier = 1")

        t_restart = time.monotonic()
        proc = _start(env, port)
        wait_for(
            lambda: rows("SELECT 1 FROM deliveries WHERE subject_id = %s AND tier = 1 AND status = 'sent'"),
            60,
            what="tier 1 sent by the restarted process",
        )
        boss = [m for rcpt, m in mailbox.messages if rcpt == ["boss@t.example"]]
        assert len(boss) == 1 and boss[0]["Subject"].startswith("【升级·第1级】未确认！")
        desk = [m for rcpt, m in mailbox.messages if rcpt == ["desk@t.example"]]
        assert len(desk) == 1, "the restart must not send tier 0 again"
        assert time.monotonic() - t_restart < 90
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        smtp.stop()
        asyncio.run(delete_topics(bootstrap, [alerts, tasks]))
