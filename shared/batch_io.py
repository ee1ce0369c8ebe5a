"""Reading and writing the CSV files of the batch commands (../shared/CONTRACTS.md).

Every batch command reads its inputs through :func:`read_table` and is run through
:func:`run_batch`, so bad input always ends the same way: exit code 2 and one line on
stderr naming the file, the row and the column at fault — never a traceback.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class BadInput(Exception):
    """Input a user can fix: names the file, and where known the row and column."""

    def __init__(self, path: str | Path, message: str, *, row: int | None = None, column: str | None = None):
        self.path = str(path)
        self.row = row
        self.column = column
        self.message = message
        where = [self.path]
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}")


def read_table(
    path: str | Path,
    *,
    required: Sequence[str] = (),
    times: Sequence[str] = (),
    numeric: Sequence[str] = (),
    strings: Sequence[str] = (),
    non_empty: bool = True,
) -> pd.DataFrame:
    """Read a contract CSV (`.csv` or `.csv.gz`) and check it.

    - `required` columns must exist (extra columns are kept, order is free);
    - `times` columns are parsed as ISO 8601, naive values taken as UTC;
    - `numeric` columns (if present) must parse as finite numbers or be empty;
    - `strings` columns are read as text and must not be empty.
    Row numbers in errors count the header as row 1, as a spreadsheet shows them.
    """
    p = Path(path)
    if not p.exists():
        raise BadInput(p, "file not found")
    if p.is_dir():
        raise BadInput(p, "is a directory, expected a CSV file")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], compression="infer")
    except pd.errors.EmptyDataError:
        raise BadInput(p, "file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise BadInput(p, f"not a readable CSV file ({str(exc).splitlines()[0][:160]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in required:
        if col not in df.columns:
            raise BadInput(p, f"missing required column (found: {', '.join(df.columns)})", column=col)
    if non_empty and df.empty:
        raise BadInput(p, "no data rows")
    for col in strings:
        if col in df.columns:
            bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
            if bad.any():
                raise BadInput(p, "empty value", row=int(np.flatnonzero(bad.to_numpy())[0]) + 2, column=col)
            df[col] = df[col].astype(str).str.strip()
    for col in times:
        if col in df.columns:
            df[col] = parse_times(df[col], p, col)
    for col in numeric:
        if col in df.columns:
            df[col] = parse_numbers(df[col], p, col)
    return df


def parse_times(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """ISO 8601 strings to UTC timestamps; a value without an offset is UTC."""
    raw = values.astype("string")
    missing = raw.isna() | (raw.str.strip() == "")
    if missing.any():
        raise BadInput(path, "empty time", row=int(np.flatnonzero(missing.to_numpy())[0]) + 2, column=column)
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadInput(path, f"cannot parse time {raw.iloc[i]!r} (ISO 8601 expected)", row=i + 2, column=column)
    return parsed


def parse_numbers(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """Numbers or empty cells (NaN); anything else, or ±inf, is bad input."""
    raw = values.astype("string").str.strip()
    out = pd.to_numeric(raw, errors="coerce")
    bad = (out.isna() & raw.notna() & (raw != "")) | np.isinf(out.astype(float).fillna(0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadInput(path, f"not a finite number: {raw.iloc[i]!r}", row=i + 2, column=column)
    return out.astype(float)


def parse_time_arg(value: str, name: str = "--train-until") -> pd.Timestamp:
    """A command-line time; naive means UTC."""
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise BadInput(name, f"cannot parse time {value!r} (ISO 8601 expected)") from None
    if pd.isna(ts):
        raise BadInput(name, f"cannot parse time {value!r} (ISO 8601 expected)")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def parse_horizons(value: str, name: str = "--horizons") -> list[int]:
    """'1,6,24' -> [1, 6, 24]; positive whole hours."""
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise BadInput(name, f"expected whole hours separated by commas, got {value!r}") from None
    if not out or any(h <= 0 for h in out):
        raise BadInput(name, f"expected positive whole hours separated by commas, got {value!r}")
    return out


def format_time(ts: pd.Series) -> pd.Series:
    """UTC timestamps as ISO 8601 with offset, e.g. 2014-03-01T05:00:00+00:00."""
    return pd.to_datetime(ts, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def write_table(df: pd.DataFrame, path: str | Path, columns: Sequence[str]) -> None:
    """Write exactly `columns`, in that order, times as ISO 8601 UTC."""
    out = df.loc[:, list(columns)].copy()
    for col in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[col]):
            out[col] = format_time(out[col])
    p = Path(path)
    if p.parent and not p.parent.exists():
        raise BadInput(p, "output folder does not exist")
    if p.is_dir():
        raise BadInput(p, "is a folder; give --out a file path, e.g. out.csv inside it")
    try:
        out.to_csv(p, index=False, float_format="%.6g")
    except OSError as exc:
        raise BadInput(p, f"cannot write the output ({exc.strerror or exc})") from None


def progress(iterable: Iterable[Any], *, total: int | None = None, desc: str = "") -> Iterable[Any]:
    """A progress bar on stderr when it is a terminal, a few plain lines otherwise."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=None, mininterval=2.0)


def run_batch(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Run a batch command: BadInput -> one line on stderr and exit code 2."""
    try:
        fn(*args, **kwargs)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def finite(x: float) -> bool:
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
