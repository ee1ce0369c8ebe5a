"""Settings of the query API (`CITYOPS_API_*`). Secrets have no default."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.notify.domain.config import DemoFlag
from shared.settings import PROJECT_ROOT, PlatformSettings, stack_env_file


class ApiSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    kafka_bootstrap: str = ""  # the API reads the database only
    api_port: int = 8130
    api_host: str = "127.0.0.1"
    # who may log in: the notification service's roster (same people, same roles) plus API-only consumers
    api_roster: Path = PROJECT_ROOT / "config" / "notify" / "roster.yaml"
    api_consumers: Path = Path(__file__).parent / "consumers.yaml"
    # both shipped files are marked `demo: true` (published passwords): refused unless this is 1
    allow_demo_accounts: DemoFlag = False
    # tokens are the notification service's (same format); one secret lets a console login use the API
    api_session_secret: str | None = None
    notify_session_secret: str | None = None
    api_rate_per_min: int = 600
    api_pool_max: int = 8
