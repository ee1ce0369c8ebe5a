"""Settings of the emergency service (`CITYOPS_EMERGENCY_*`, plus the shared `CITYOPS_*`)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import PROJECT_ROOT, PlatformSettings, stack_env_file


class EmergencySettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    emergency_port: int = 8113
    # the JSON the simulator writes: {"city": {...}, "domains": {"emergency": {...}}}
    city_config: Path | None = None
    emergency_group_prefix: str = "cityops-emergency"
    # HMAC key of the workers' pseudonyms on shared topics; without one, a random key is kept in the state dir
    emergency_pseudonym_key: str | None = None
    # who may read a worker's track and health (token roles); admin always may
    emergency_personal_roles: list[str] = Field(default_factory=lambda: ["admin", "safety_officer"])
    # tokens are the notification service's (same signer); this one wins if both are set
    emergency_session_secret: str | None = None
    notify_session_secret: str | None = None
    # the notification service's roster (same file, same setting): a token's subject must still be in it and still
    # hold the token's role
    notify_roster: Path = PROJECT_ROOT / "config" / "notify" / "roster.yaml"
    emergency_retention_days: float = 7.0
    emergency_retention_interval_s: float = 3600.0
    # samples of normal operation a machine's detector learns from when the config gives no train_until
    emergency_train_samples: int = 480
    emergency_fault_model: str = "hybrid"
    # consecutive normal samples / readings before a condition counts as cleared (no flapping)
    emergency_clear_after: int = 30
    emergency_worker_clear_after: int = 3
    # wind for the gas plume when no nowcast nor weather observation has arrived
    emergency_default_wind_from_deg: float = 200.0
    emergency_default_wind_speed_ms: float = 3.0

    @property
    def emergency_state_dir(self) -> Path:
        d = Path(self.state_dir) / "emergency"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def pseudonym_key(self) -> bytes:
        """The pseudonymisation key: from the setting, else one generated once and kept (mode 600)."""
        if self.emergency_pseudonym_key:
            return self.emergency_pseudonym_key.encode()
        path = self.emergency_state_dir / "pseudonym.key"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()

    def token_secret(self) -> str | None:
        return self.emergency_session_secret or self.notify_session_secret

    def load_city_config(self) -> dict[str, Any]:
        """The simulator's city config; {} when none is set (the service then learns from the stream)."""
        if self.city_config is None:
            return {}
        if not self.city_config.exists():
            raise SystemExit(f"error: CITYOPS_CITY_CONFIG={self.city_config} does not exist; "
                             "run `cityops simulate` first or unset it")
        return json.loads(self.city_config.read_text(encoding="utf-8"))
