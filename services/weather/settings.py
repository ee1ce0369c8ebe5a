"""Settings of the weather streaming service (`CITYOPS_WEATHER_*`, `CITYOPS_CITY_CONFIG`)."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import SettingsConfigDict

from shared.settings import PlatformSettings, stack_env_file


class WeatherSettings(PlatformSettings):
    model_config = SettingsConfigDict(env_prefix="CITYOPS_", env_file=stack_env_file(), extra="ignore")

    weather_port: int = 8111
    weather_group: str = "cityops-weather-signals"
    city_config: Path | None = None
