"""Settings of the notification service (`CITYOPS_NOTIFY_*`). Secrets have no default."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from schemas.topics import ALERTS, DELIVERIES, TASK_UPDATES, TASKS
from shared.notify.domain.config import DemoFlag
from shared.settings import PROJECT_ROOT, PlatformSettings, stack_env_file

CONFIG = PROJECT_ROOT / "config" / "notify"


class NotifySettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    notify_port: int = 8107
    notify_host: str = "127.0.0.1"
    notify_routing: Path = CONFIG / "routing.yaml"
    # the shipped roster is marked `demo: true` (published passwords): refused unless this is 1
    notify_roster: Path = CONFIG / "roster.yaml"
    allow_demo_accounts: DemoFlag = False
    notify_group: str = "cityops-notify"
    # Topics are settings so tests can run on their own topics beside a live demo.
    notify_alerts_topic: str = ALERTS
    notify_tasks_topic: str = TASKS
    notify_task_updates_topic: str = TASK_UPDATES
    notify_deliveries_topic: str = DELIVERIES
    # Channels. The webhook URL is the default for people without their own `webhook_url`.
    notify_webhook_url: str | None = None
    notify_webhook_secret: str | None = None
    notify_smtp_host: str = "127.0.0.1"
    notify_smtp_port: int = 25
    notify_smtp_from: str = "cityops-notify@city.example"
    notify_sms_url: str | None = None
    notify_sms_token: str | None = None
    notify_mqtt_user: str = "svc-notify"
    notify_http_timeout_s: float = 5.0
    notify_send_concurrency: int = 64
    notify_webhook_connections: int = 8
    # Timers. Multiplies every ack_timeout_s of the routing file: 0.01 turns 5 min into 3 s for a demo.
    notify_escalation_scale: float = 1.0
    notify_poll_s: float = 0.5
    notify_lease_s: float = 60.0
    # Console and mobile-app sessions. No default: without it tokens are signed with a per-process key.
    notify_session_secret: str | None = None
