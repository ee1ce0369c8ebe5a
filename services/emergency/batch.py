"""Batch command 7 of CONTRACTS.md: `cityops emergency detect` over the domain's fault detector."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

from shared.batch_io import BadInput, parse_numbers, parse_time_arg, read_table, write_table

IGNORED_COLUMNS = ("anomaly", "changepoint", "label")
OUT_COLUMNS = ["time", "score", "is_anomaly"]


def read_series(series_path: str) -> tuple[pd.DataFrame, list[str]]:
    """Read one machine's series: `time` plus numeric channels, sorted by time."""
    df = read_table(series_path, required=["time"], times=["time"])
    channels = [c for c in df.columns if c != "time" and c.lower() not in IGNORED_COLUMNS]
    if not channels:
        raise BadInput(series_path, "no channel columns besides 'time' (and ignored label columns)")
    for c in channels:
        df[c] = parse_numbers(df[c], series_path, c)
    df = df.sort_values("time", kind="stable").reset_index(drop=True)
    return df, channels


def detect(series_path: str, train_until: str, out_path: str, model: str = "mset") -> pd.DataFrame:
    """Learn normal operation from rows up to `train_until`, score every later row, write OUT."""
    from services.emergency.domain.fault import alerts_from, fit_detector

    t_end = parse_time_arg(train_until)
    df, channels = read_series(series_path)
    train = df[df["time"] <= t_end]
    test = df[df["time"] > t_end]
    if train.empty:
        raise BadInput(series_path, f"no rows at or before --train-until {t_end.isoformat()}", column="time")
    empty = [c for c in channels if train[c].isna().all()]
    if len(empty) == len(channels):
        raise BadInput(series_path, "no channel has readings at or before --train-until", column=empty[0])
    if empty:
        print(f"emergency detect: channels without readings before --train-until, not scored: {', '.join(empty)}",
              file=sys.stderr)
        channels = [c for c in channels if c not in empty]
    try:
        detector = fit_detector(train[channels], model=model)  # type: ignore[arg-type]
    except ValueError as exc:
        raise BadInput(series_path, f"cannot learn normal operation: {exc}") from None
    left_out = [c for c, s in zip(channels, detector.slow, strict=True) if s]
    print(f"emergency detect: {model}, {len(channels)} channels, {len(train)} normal rows, "
          f"{len(test)} rows to score" + (f"; drifting/constant, not scored: {', '.join(left_out)}" if left_out else ""),
          file=sys.stderr)
    out = pd.DataFrame({"time": test["time"].to_numpy(), "score": np.zeros(len(test)), "is_anomaly": 0})
    if len(test):
        scores = detector.score(test[channels])
        out["score"] = scores.score
        out["is_anomaly"] = scores.is_anomaly.astype(int)
        episodes = alerts_from(scores)
        print(f"emergency detect: {int(out['is_anomaly'].sum())} rows flagged in {len(episodes)} alarm episodes",
              file=sys.stderr)
        for ep in episodes[:5]:
            print(f"  {test['time'].iloc[ep.start_index].isoformat()} .. {test['time'].iloc[ep.end_index].isoformat()}"
                  f" peak {ep.peak_score:.1f}, channels: {', '.join(ep.channels)}", file=sys.stderr)
    write_table(out, out_path, OUT_COLUMNS)
    return out
