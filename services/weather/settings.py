"""Settings of the weather streaming service (`CITYOPS_WEATHER_*`, `CITYOPS_CITY_CONFIG`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic_settings import SettingsConfigDict

from shared.settings import PlatformSettings, stack_env_file


class WeatherSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    weather_port: int = 8111
    weather_group: str = "cityops-weather-signals"
    city_config: Path | None = None
    # nowcasts: lead times (h) and the variables, each hourly at every station
    weather_nowcast_horizons: list[int] = [1, 2, 3, 4, 5, 6]
    weather_nowcast_variables: list[str] = ["temp", "dewp", "pres", "wind_speed", "wind_dir", "rain"]
    # hours of hourly station values kept for the models, QC and the bulletins' charts
    weather_buffer_h: int = 336
    # refit the trained candidates (xgboost, SARIMAX) every this many closed hours, once there are
    # `weather_min_train_h` hours; in between, the rolling skill still picks among all candidates
    weather_refit_every_h: int = 6
    weather_min_train_h: int = 6
    # closed hours a faulty sensor must pass QC again before its sensor_fault alert is cleared
    weather_fault_clear_h: int = 2

    def load_city_config(self) -> dict[str, Any]:
        """The simulator's city config; {} when none is set."""
        if self.city_config is None:
            return {}
        if not self.city_config.exists():
            raise SystemExit(f"error: CITYOPS_CITY_CONFIG={self.city_config} does not exist; "
                             "run `cityops simulate` first or unset it")
        return json.loads(self.city_config.read_text(encoding="utf-8"))
