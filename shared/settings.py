"""Settings every CityOps process shares, read from `CITYOPS_*` environment variables.

`cityops stack up` writes `.state/stack.env`; it is read as a fallback, so the demo and the
tests need no manual exports. In compose and Kubernetes the same names come from the
environment. Secrets (the database URL) have no default.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def state_dir() -> Path:
    return Path(os.environ.get("CITYOPS_STATE_DIR", PROJECT_ROOT / ".state")).resolve()


def stack_env_file() -> Path:
    return state_dir() / "stack.env"


class PlatformSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    kafka_bootstrap: str
    db_url: str
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_credentials: Path | None = None
    state_dir: Path = state_dir()
    log_level: str = "INFO"
    # where the service's HTTP endpoints listen (read by shared.service.serve); 0.0.0.0 in containers
    http_host: str = "127.0.0.1"
    # read by shared.kafka.consumer(): isolate a run's consumer groups, and where fresh groups start
    kafka_group_prefix: str = ""
    kafka_start_at_ms: int | None = None
    # read by shared.kafka.security_options(): PLAINTEXT inside the suite's network, SASL (SCRAM) with a
    # KafkaUser's ACLs elsewhere
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_username: str | None = None
    kafka_password: str | None = None
    kafka_ssl_cafile: Path | None = None

    def mqtt_password(self, group: str, user: str) -> str:
        """Password of an MQTT user from the credentials file the stack generated."""
        import json

        if self.mqtt_credentials is None or not self.mqtt_credentials.exists():
            raise RuntimeError("no MQTT credentials: run `cityops stack up` or set CITYOPS_MQTT_CREDENTIALS")
        return json.loads(self.mqtt_credentials.read_text())[group][user]


def load() -> PlatformSettings:
    """Platform settings, with a message that says what to do when the stack is not set up."""
    from pydantic import ValidationError

    try:
        return PlatformSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        missing = ", ".join("CITYOPS_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise SystemExit(f"error: missing settings {missing}: run `cityops stack up` first, or export them") from None
