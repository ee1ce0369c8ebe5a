"""Where the local stack keeps its state and which ports it listens on.

Everything `cityops stack up` creates lives under one folder (default `.state/` in the
checkout, or `$CITYOPS_STATE_DIR`); ports come from the environment so that two checkouts
can run side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class StackConfig:
    state_dir: Path
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    mqtt_port: int
    # the authenticated listener (SCRAM-SHA-512 + ACLs) for parties outside the suite
    kafka_sasl_port: int = 19094

    @classmethod
    def from_env(cls) -> StackConfig:
        state = Path(os.environ.get("CITYOPS_STATE_DIR", PROJECT_ROOT / ".state")).resolve()
        kafka_port = _port("CITYOPS_KAFKA_PORT", 19092)
        return cls(
            state_dir=state,
            kafka_port=kafka_port,
            kafka_controller_port=_port("CITYOPS_KAFKA_CONTROLLER_PORT", 19093),
            pg_port=_port("CITYOPS_PG_PORT", 15432),
            mqtt_port=_port("CITYOPS_MQTT_PORT", 11883),
            kafka_sasl_port=_port("CITYOPS_KAFKA_SASL_PORT", kafka_port + 2),
        )

    def dir(self, *parts: str) -> Path:
        p = self.state_dir.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def env_file(self) -> Path:
        """Connection settings for every service and test, written by `stack up`."""
        return self.state_dir / "stack.env"
