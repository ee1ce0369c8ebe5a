"""Settings of the air-quality service (`CITYOPS_AIR_*`, plus the shared `CITYOPS_*`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic_settings import SettingsConfigDict

from shared.settings import PlatformSettings, stack_env_file


class AirSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    air_port: int = 8110
    # the JSON the simulator writes: {"city": {...}, "domains": {"air": {...}}}
    city_config: Path | None = None
    air_group_prefix: str = "cityops-air"
    # simulated minutes per grid window (the config's grid.update_min wins when present)
    air_grid_update_min: float = 5.0
    air_cell_km: float = 1.0
    # heavy work (grids, forecasts) at most this often in wall seconds; alerts never wait for it
    air_heavy_every_s: float = 3.0
    # forecast horizons (hours) and how often (simulated hours) the forecaster is refitted
    air_forecast_horizons: list[int] = [1, 3, 6, 12, 24, 48, 72]
    air_refit_every_h: float = 6.0
    # simulated hours of reference-station history kept in memory
    air_history_h: float = 96.0
    # forecast exceedance: the nearest horizons (hours) that may raise a forecast alert
    air_forecast_alert_max_h: int = 6

    @property
    def air_state_dir(self) -> Path:
        d = Path(self.state_dir) / "air"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def load_city_config(self) -> dict[str, Any]:
        """The simulator's city config; {} when none is set (default city, no registered sources)."""
        if self.city_config is None:
            return {}
        if not self.city_config.exists():
            raise SystemExit(f"error: CITYOPS_CITY_CONFIG={self.city_config} does not exist; "
                             "run `cityops simulate` first or unset it")
        return json.loads(self.city_config.read_text(encoding="utf-8"))
