"""Contract CSVs as spreadsheets and editors write them: errors name the file line, columns stay in place."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shared.batch_io import BadInput, file_row, read_table

HEADER = "time,station_id,lat,lon,pm25"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    if name.endswith(".gz"):
        p.write_bytes(gzip.compress(text.encode()))
    else:
        p.write_text(text)
    return p


def _read(p: Path):
    return read_table(p, required=["time", "station_id", "lat", "lon"], times=["time"],
                      numeric=["lat", "lon", "pm25"], strings=["station_id"])


@pytest.mark.parametrize("name", ["obs.csv", "obs.csv.gz"])
def test_rows_ending_in_a_comma_keep_their_columns(tmp_path, name):
    """Before: a comma at the end of every data row (a spreadsheet export) made pandas take `time` as the index,
    so each value moved one column left and the file was refused for a wrong reason ("cannot parse time 'A'",
    or "column 'lon': empty value" though lon is filled). Now the trailing empty cell is ignored."""
    p = _write(tmp_path, name, f"{HEADER}\n2014-03-01T00:00,A,39.9,116.4,3,\n2014-03-01T01:00,A,39.9,116.4,4,\n")
    df = _read(p)
    assert list(df.columns) == HEADER.split(",")
    assert df["station_id"].tolist() == ["A", "A"]
    assert df["lon"].tolist() == [116.4, 116.4] and df["pm25"].tolist() == [3.0, 4.0]


@pytest.mark.parametrize("line", [2, 3])
def test_extra_values_are_refused_naming_the_row(tmp_path, line):
    """A row with more values than the header has columns is refused with its line. Before, on the first data row
    the extra values pushed every column along (the error named a wrong column); with index_col=False alone they
    would be dropped quietly."""
    rows = ["2014-03-01T00:00,A,39.9,116.4,3", "2014-03-01T01:00,A,39.9,116.4,4"]
    rows[line - 2] += ",5,6"
    p = _write(tmp_path, "obs.csv", "\n".join([HEADER, *rows]) + "\n")
    with pytest.raises(BadInput) as e:
        _read(p)
    assert e.value.row == line and e.value.column is None
    assert e.value.message.startswith("7 values but the header names 5 columns")


@pytest.mark.parametrize("name", ["obs.csv", "obs.csv.gz"])
def test_row_numbers_are_file_lines_across_blank_lines(tmp_path, name):
    """Before: pandas skipped blank lines, so an error after one named the line above the bad value. Now the
    row is the line an editor shows; blank lines (and rows of only empty cells) still carry no reading."""
    text = f"\n{HEADER}\n2014-03-01T00:00,A,39.9,116.4,3\n\n,,,,\n2014-03-01T01:00,A,39.9,116.4,x\n"
    p = _write(tmp_path, name, text)
    with pytest.raises(BadInput) as e:
        _read(p)
    assert (e.value.row, e.value.column) == (6, "pm25")
    assert text.splitlines()[e.value.row - 1].endswith(",x")


def test_blank_lines_are_dropped_and_file_row_maps_back(tmp_path):
    text = f"{HEADER}\n2014-03-01T00:00,A,39.9,116.4,3\n\n   \n2014-03-01T01:00,B,39.9,116.4,4\n\n"
    df = _read(_write(tmp_path, "obs.csv", text))
    assert df["station_id"].tolist() == ["A", "B"]
    lines = text.splitlines()
    assert [lines[file_row(df, i) - 1].split(",")[1] for i in range(len(df))] == ["A", "B"]
    assert file_row(df["pm25"], 1) == 5


def test_empty_cells_in_a_row_with_data_are_still_refused(tmp_path):
    p = _write(tmp_path, "obs.csv", f"{HEADER}\n2014-03-01T00:00,A,39.9,116.4,3\n\n2014-03-01T01:00,,39.9,116.4,4\n")
    with pytest.raises(BadInput) as e:
        _read(p)
    assert (e.value.row, e.value.column, e.value.message) == (4, "station_id", "empty value")


def test_only_blank_lines_after_the_header_is_no_data(tmp_path):
    with pytest.raises(BadInput, match="no data rows"):
        _read(_write(tmp_path, "obs.csv", f"{HEADER}\n\n\n"))


@pytest.mark.parametrize("command", ["air", "weather"])
def test_the_commands_own_checks_name_the_file_line_after_a_blank_line(tmp_path, command):
    """The air and weather commands' own checks (a latitude out of range) counted rows as `i + 2`: after a blank
    line they named the line above the bad one."""
    from services.air_quality.batch import read_observations as air_obs
    from services.weather.batch import read_observations as weather_obs

    p = _write(tmp_path, "obs.csv", f"{HEADER}\n2026-01-01T00:00Z,A,30,120,10\n\n2026-01-01T01:00Z,A,95,120,11\n")
    with pytest.raises(BadInput) as e:
        air_obs(str(p), "pm25") if command == "air" else weather_obs(p)
    assert e.value.row == 4 and e.value.column == "lat", str(e.value)


def test_a_missing_value_written_as_a_word_is_told_to_be_an_empty_cell(tmp_path):
    p = _write(tmp_path, "obs.csv", f"{HEADER}\n2026-01-01T00:00Z,A,30,120,NA\n")
    with pytest.raises(BadInput) as e:
        _read(p)
    assert e.value.row == 2 and "empty cell" in str(e.value)
