"""`cityops weather qc` gives back the rows it read, whatever lines the file holds between them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from services.weather.domain.simulate import station_layout, synthetic_observations

CITYOPS = str(Path(sys.executable).with_name("cityops"))


def test_a_line_of_empty_cells_is_neither_a_crash_nor_a_row_out_of_place(tmp_path):
    """The command read the file twice: once checked (where a line of only commas, as spreadsheets export, is
    dropped) and once as text for the output, where it stayed, so the flags no longer fitted the rows and the
    command died with a ValueError traceback. The text is now read the same way as the checked table."""
    lat, lon = station_layout(3, 4, (120.0, 30.1, 120.3, 30.4))
    obs = synthetic_observations(lat, lon, ["a", "b", "c"], pd.date_range("2025-05-01", periods=48, freq="h",
                                                                          tz="UTC"), 4)
    obs["time"] = obs["time"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    text = obs.to_csv(index=False).splitlines()
    src = tmp_path / "obs.csv"
    src.write_text("\n".join([*text[:60], "," * (len(obs.columns) - 1), *text[60:]]) + "\n")
    out = tmp_path / "qc.csv"
    r = subprocess.run([CITYOPS, "weather", "qc", "--observations", str(src), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-1500:]
    if r.returncode == 2:  # a reader that keeps such a line names it instead
        assert len(r.stderr.strip().splitlines()) == 1 and "row 61" in r.stderr, r.stderr
        return
    assert r.returncode == 0, r.stderr
    q = pd.read_csv(out, dtype=str)
    assert len(q) == len(obs)
    pd.testing.assert_frame_equal(q[list(obs.columns)].reset_index(drop=True),
                                  pd.read_csv(src, dtype=str).dropna(how="all").reset_index(drop=True))
    assert q["temp_qc"].notna().all()
