"""Batch drivers for `cityops weather nowcast` and `cityops weather qc` (CONTRACTS.md §4, §5).

Thin: read and check the CSV, put it on the hourly station grid, call the domain code,
write the contract's columns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from shared.batch_io import BadInput, file_row, parse_horizons, parse_time_arg, read_table, write_table

VARIABLES = ("temp", "pres", "dewp", "rain", "wind_dir", "wind_speed")


def _log(msg: str) -> None:
    print(f"weather: {msg}", file=sys.stderr, flush=True)


def read_observations(path: str | Path) -> pd.DataFrame:
    """Read and check an observations CSV (time, station_id, lat, lon, variables…)."""
    df = read_table(path, required=("time", "station_id", "lat", "lon"), times=("time",),
                    numeric=("lat", "lon", *VARIABLES), strings=("station_id",))
    for col in ("lat", "lon"):
        bad = df[col].isna()
        if bad.any():
            raise BadInput(path, "empty value", row=file_row(df, int(np.flatnonzero(bad.to_numpy())[0])), column=col)
    lim = {"lat": 90.0, "lon": 180.0}
    for col, m in lim.items():
        bad = df[col].abs() > m
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise BadInput(path, f"out of range: {df[col].iloc[i]}", row=file_row(df, i), column=col)
    if not any(v in df.columns for v in VARIABLES):
        raise BadInput(path, f"no weather variable column (expected any of {', '.join(VARIABLES)})")
    return df


def nowcast(obs_path: str, variable: str, horizons: str, train_until: str, out_path: str) -> None:
    """CONTRACTS §4: forecasts for every hourly issue time after T and every station."""
    from services.weather.domain.grid import to_grid
    from services.weather.domain.nowcast import NowcastConfig, fit_nowcaster
    from services.weather.domain.nowcast import nowcast as run_nowcast
    from services.weather.domain.qc import passed_values, qc_grid

    # '1,1' asks for horizon 1 once: one row per issue time, station and horizon
    hs = list(dict.fromkeys(parse_horizons(horizons)))
    t_until = parse_time_arg(train_until)
    if variable not in VARIABLES:
        raise BadInput("--variable", f"unknown variable {variable!r} (expected one of {', '.join(VARIABLES)})")
    obs = read_observations(obs_path)
    if variable not in obs.columns:
        raise BadInput(obs_path, "missing column for --variable", column=variable)
    if obs[variable].notna().sum() == 0:
        raise BadInput(obs_path, "no values at all", column=variable)
    if not (obs["time"] <= t_until).any():
        raise BadInput(obs_path, f"no observations at or before --train-until {t_until.isoformat()}", column="time")
    if not (obs["time"] > t_until).any():
        raise BadInput(obs_path, f"no observations after --train-until {t_until.isoformat()}", column="time")
    grid = to_grid(obs)
    _log(f"{grid.n_stations} stations, {grid.n_times} hours; quality control")
    passed = passed_values(grid, qc_grid(grid, causal=True))
    _log(f"fitting {variable} nowcasters for horizons {hs} on data up to {t_until.isoformat()}")
    model = fit_nowcaster(passed, variable, t_until, NowcastConfig(horizons=hs))
    issue = np.asarray(grid.times > t_until)
    _log(f"nowcasting {int(issue.sum())} issue times")
    res = run_nowcast(model, passed, issue_rows=np.flatnonzero(issue))
    out = res.to_frame(issue).rename(columns={"value": variable, "p10": f"{variable}_p10", "p90": f"{variable}_p90"})
    write_table(out, out_path, ["issue_time", "station_id", "horizon_h", variable, f"{variable}_p10", f"{variable}_p90"])
    _log(f"wrote {len(out)} rows to {out_path}")


def qc(obs_path: str, out_path: str) -> None:
    """CONTRACTS §5: the input rows and columns plus `<variable>_qc` (QARTOD flags) per variable present."""
    from services.weather.domain.grid import grid_index, to_grid
    from services.weather.domain.qc import (
        DEFAULT_QC_CONFIG,
        FAIL,
        MISSING,
        NOT_EVALUATED,
        SUSPECT,
        gross_range,
        qc_grid,
        station_level,
    )

    obs = read_observations(obs_path)
    present = [v for v in VARIABLES if v in obs.columns]
    grid = to_grid(obs, present)
    _log(f"{grid.n_stations} stations, {grid.n_times} hours, variables {', '.join(present)}")
    res = qc_grid(grid)
    ti, si = grid_index(grid, obs)
    # the cells as written, read as `obs` was (same rows: a line of empty cells is dropped from both)
    raw = read_table(obs_path)
    for v in present:
        f = res.flags[v][ti, si].astype(int)
        # a duplicate (station, hour) row keeps its own missing flag if its own cell is empty
        own = obs[v].to_numpy(dtype=float)
        f = np.where(np.isnan(own), MISSING, f)
        # the hour's checks ran on one value per station and hour (the last given): another row of that hour with
        # a different value (sub-hourly data, a duplicate) gets its own gross-range verdict, else "not evaluated"
        # (it used to inherit the checked value's flag: 99 °C passed beside a 20 °C row)
        other = ~np.isnan(own) & ~np.isclose(own, grid.values[v][ti, si])
        if other.any() and "fail_span" in DEFAULT_QC_CONFIG.get(v, {}):
            cfg = DEFAULT_QC_CONFIG[v]
            level = station_level(grid.values[v], cfg)
            gr = gross_range(own, cfg, None if level is None else level[si]).astype(int)
            f = np.where(other, np.where(np.isin(gr, (SUSPECT, FAIL)), gr, NOT_EVALUATED), f)
        raw[f"{v}_qc"] = f
    cols = list(raw.columns)
    write_table(raw, out_path, cols)
    _log(f"wrote {len(raw)} rows to {out_path}; flagged " + ", ".join(
        f"{v} {int(np.isin(raw[f'{v}_qc'], (3, 4)).sum())}" for v in present))
