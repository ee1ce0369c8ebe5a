"""Batch commands 1–3 of ../shared/CONTRACTS.md: read and check CSVs, call domain/, write CSV."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from shared.batch_io import BadInput, file_row, parse_horizons, parse_time_arg, read_table, write_table

POLLUTANTS = ("pm25", "pm10", "so2", "no2", "co", "o3")
MET = ("temp", "pres", "dewp", "rain", "wind_dir", "wind_speed")
DEFAULT_THRESHOLDS = {"pm25": 75.0, "pm10": 150.0, "so2": 150.0, "no2": 80.0, "co": 4000.0, "o3": 160.0}
SOURCE_KINDS = {"industrial", "traffic", "construction", "dust", "other"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _check_pollutant(pollutant: str) -> None:
    if pollutant not in POLLUTANTS:
        raise BadInput("--pollutant", f"unknown pollutant {pollutant!r} (one of {', '.join(POLLUTANTS)})")


def read_observations(path: str, pollutant: str, *, need_wind: bool = False) -> pd.DataFrame:
    """OBS of CONTRACTS.md §1, checked: lat/lon in range, one station one place, some values present."""
    _check_pollutant(pollutant)
    required = ["time", "station_id", "lat", "lon", pollutant] + (["wind_dir", "wind_speed"] if need_wind else [])
    df = read_table(path, required=required, times=["time"], numeric=["lat", "lon", *POLLUTANTS, *MET],
                    strings=["station_id"])
    for col, lo, hi in (("lat", -90, 90), ("lon", -180, 180)):
        bad = df[col].isna() | (df[col] < lo) | (df[col] > hi)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise BadInput(path, f"{col} missing or outside [{lo}, {hi}]", row=file_row(df, i), column=col)
    neg = df[pollutant] < 0
    if neg.any():
        i = int(np.flatnonzero(neg.to_numpy())[0])
        raise BadInput(path, "negative concentration", row=file_row(df, i), column=pollutant)
    if df[pollutant].notna().sum() == 0:
        raise BadInput(path, f"no {pollutant} values at all", column=pollutant)
    if need_wind:
        for col in ("wind_dir", "wind_speed"):
            if df[col].notna().sum() == 0:
                raise BadInput(path, "no values at all", column=col)
    dup = df.duplicated(["time", "station_id"])
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise BadInput(path, "duplicate (time, station_id)", row=file_row(df, i), column="station_id")
    return df


def estimate(obs_path: str, targets_path: str, out_path: str, pollutant: str = "pm25") -> None:
    """`cityops air estimate` (CONTRACTS.md §1)."""
    from services.air_quality.domain.spatial import estimate_at

    obs = read_observations(obs_path, pollutant)
    targets = read_table(targets_path, required=["target_id", "lat", "lon"], numeric=["lat", "lon"],
                         strings=["target_id"])
    for col in ("lat", "lon"):
        bad = targets[col].isna()
        if bad.any():
            raise BadInput(targets_path, "empty value", row=file_row(targets, int(np.flatnonzero(bad.to_numpy())[0])), column=col)
    _say(f"air estimate: {obs['station_id'].nunique()} stations, {obs['time'].nunique()} hours, "
         f"{len(targets)} targets")
    out = estimate_at(obs, targets, pollutant)
    write_table(out, out_path, ["time", "target_id", pollutant, f"{pollutant}_std"])
    _say(f"air estimate: wrote {len(out)} rows to {out_path}")


def forecast(obs_path: str, horizons: str, train_until: str, out_path: str, pollutant: str = "pm25") -> None:
    """`cityops air forecast` (CONTRACTS.md §2)."""
    from services.air_quality.domain.forecast import forecast_stations

    # '1,1' asks for horizon 1 once: one row per issue time, station and horizon
    hs = list(dict.fromkeys(parse_horizons(horizons)))
    t = parse_time_arg(train_until)
    obs = read_observations(obs_path, pollutant)
    if not (obs["time"] > t).any():
        raise BadInput(obs_path, f"no observation after --train-until {t.isoformat()}", column="time")
    if not (obs["time"] <= t).any():
        raise BadInput(obs_path, f"no observation at or before --train-until {t.isoformat()}", column="time")
    _say(f"air forecast: {obs['station_id'].nunique()} stations, horizons {hs}, training until {t.isoformat()}")
    out = forecast_stations(obs, hs, t, pollutant)
    blend = ", ".join(f"+{h} h {w:.2f}" if w is not None else f"+{h} h AutoReg (too little history)"
                      for h, w in out.attrs.get("blend_weight_xgboost", {}).items())
    _say(f"air forecast: weight on xgboost against the ridge, chosen on the training data's last months: {blend}")
    write_table(out, out_path, ["issue_time", "station_id", "horizon_h", pollutant])
    _say(f"air forecast: wrote {len(out)} rows to {out_path}")


def attribute(obs_path: str, sources_path: str, out_path: str, pollutant: str = "pm25",
              threshold: float | None = None) -> None:
    """`cityops air attribute` (CONTRACTS.md §3)."""
    from services.air_quality.domain.attribution import attribute_table

    obs = read_observations(obs_path, pollutant, need_wind=True)
    src = read_table(sources_path, required=["source_id", "lat", "lon", "kind"], numeric=["lat", "lon", "height_m"],
                     strings=["source_id", "kind"])
    for col in ("lat", "lon"):
        bad = src[col].isna()
        if bad.any():
            raise BadInput(sources_path, "empty value", row=file_row(src, int(np.flatnonzero(bad.to_numpy())[0])), column=col)
    kinds = src["kind"].str.lower()
    bad = ~kinds.isin(SOURCE_KINDS)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadInput(sources_path, f"unknown kind {src['kind'].iloc[i]!r} (one of {', '.join(sorted(SOURCE_KINDS))})",
                       row=file_row(src, i), column="kind")
    if "height_m" in src and (src["height_m"] < 0).any():
        i = int(np.flatnonzero((src["height_m"] < 0).to_numpy())[0])
        raise BadInput(sources_path, "negative height", row=file_row(src, i), column="height_m")
    thr = DEFAULT_THRESHOLDS[pollutant] if threshold is None else float(threshold)
    _say(f"air attribute: {len(src)} sources, threshold {thr:g}")
    out = attribute_table(obs, src, pollutant, thr)
    write_table(out, out_path, ["time", "station_id", "source_id", "contribution", "rank"])
    _say(f"air attribute: wrote {len(out)} rows to {out_path}")
