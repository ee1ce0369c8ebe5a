"""Settings of the ingest gateway and the observation sink (`CITYOPS_INGEST_*`)."""

from __future__ import annotations

import os
import socket

from pydantic_settings import SettingsConfigDict

from shared.settings import PlatformSettings, stack_env_file


class IngestSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    ingest_port: int = 8101
    sink_port: int = 8102
    ingest_instance: str = f"{socket.gethostname()}-{os.getpid()}"
    ingest_mqtt_user: str = "svc-ingest"
    ingest_share_group: str = "ingest"
    ingest_max_payload_bytes: int = 16_384
    ingest_max_future_s: int = 300
    ingest_max_age_s: int = 7 * 86400
    ingest_registry_refresh_s: float = 30.0
    ingest_session_expiry_s: int = 3600
    sink_group: str = "cityops-sink-observations"
    sink_batch_max: int = 5000
