"""Settings of the water service (`CITYOPS_WATER_*`, plus the shared `CITYOPS_*`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic_settings import SettingsConfigDict

from shared.settings import PlatformSettings, stack_env_file


class WaterSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    water_port: int = 8112
    # the JSON the simulator writes: {"city": {...}, "start", "hours", "domains": {"water": {...}}}
    city_config: Path | None = None
    water_group_prefix: str = "cityops-water"
    # days of leak-free history simulated from the city config to pre-train the leak monitor (a city
    # has years of SCADA history, a demo has hours); 0 = learn from the stream's leak-free part only.
    # Two weeks, so that every weekday is seen twice: with one week, the held-out block holding the only
    # Sunday is predicted by a model that never saw a Sunday, and the CUSUM threshold calibrated on those
    # residuals doubled for some start times of day - the demo's burst then went unnoticed
    water_history_days: float = 14.0
    # without a config's `leak_free_until`, this many simulated hours of the stream are the training part
    water_train_hours: float = 12.0
    # consecutive 5-min evaluations below a flood grade before it is lowered or cleared (no flapping)
    water_flood_clear_after: int = 6
    water_flood_horizon_h: int = 6
    # wall seconds without new SCADA steps after which pending leak alarms are localised on what there is
    water_idle_flush_s: float = 20.0
    # wall seconds a SCADA step waits for a silent sensor before it goes into the models without it
    water_silent_sensor_s: float = 10.0

    @property
    def water_state_dir(self) -> Path:
        d = Path(self.state_dir) / "water"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def load_city_config(self) -> dict[str, Any]:
        """The simulator's city config; {} when none is set."""
        if self.city_config is None:
            return {}
        if not self.city_config.exists():
            raise SystemExit(f"error: CITYOPS_CITY_CONFIG={self.city_config} does not exist; "
                             "run `cityops simulate` first or unset it")
        return json.loads(self.city_config.read_text(encoding="utf-8"))
