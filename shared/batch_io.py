"""Reading and writing the CSV files of the batch commands (../shared/CONTRACTS.md).

Every batch command reads its inputs through :func:`read_table` and is run through
:func:`run_batch`, so bad input always ends the same way: exit code 2 and one line on
stderr naming the file, the row and the column at fault — never a traceback.
"""

from __future__ import annotations

import csv
import math
import sys
import warnings
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
    Row numbers in errors are lines of the file (the header is row 1, as an editor or a spreadsheet shows them);
    blank lines are dropped, and `file_row` gives the line of a row of the returned table.
    """
    p = Path(path)
    if not p.exists():
        raise BadInput(p, "file not found")
    if p.is_dir():
        raise BadInput(p, "is a directory, expected a CSV file")
    try:
        # pandas skips blank lines before the header even when told to keep blank lines
        lead = _leading_blank_lines(p)
        df = _read_csv(p, lead)
    except pd.errors.EmptyDataError:
        raise BadInput(p, "file is empty (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise BadInput(p, f"not a readable CSV file ({str(exc).splitlines()[0][:160]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in required:
        if col not in df.columns:
            raise BadInput(p, f"missing required column (found: {', '.join(df.columns)})", column=col)
    df = _drop_blank_rows(df, header_line=lead + 1)
    if non_empty and df.empty:
        raise BadInput(p, "no data rows")
    for col in strings:
        if col in df.columns:
            bad = df[col].isna() | (df[col].astype(str).str.strip() == "")
            if bad.any():
                raise BadInput(p, "empty value", row=file_row(df, int(np.flatnonzero(bad.to_numpy())[0])), column=col)
            df[col] = df[col].astype(str).str.strip()
    for col in times:
        if col in df.columns:
            df[col] = parse_times(df[col], p, col)
    for col in numeric:
        if col in df.columns:
            df[col] = parse_numbers(df[col], p, col)
    return df


_LINES = "cityops_file_lines"  # attrs key: (line of the header, sorted lines of the blank rows dropped)


def file_row(table: pd.DataFrame | pd.Series, i: int) -> int:
    """The file line of row `i` (a position, from 0) of a table as `read_table` returned it, or of one of its
    columns: what an error names so that the user finds the row in an editor."""
    header_line, blank = table.attrs.get(_LINES, (1, ()))
    line = header_line + 1 + i
    for b in blank:
        if b > line:
            break
        line += 1
    return line


def _open_text(p: Path):
    from pandas.io.common import get_handle  # decompresses as read_csv(compression="infer") does

    return get_handle(p, "r", compression="infer", encoding="utf-8", errors="replace")


def _leading_blank_lines(p: Path) -> int:
    with _open_text(p) as h:
        n = 0
        for line in h.handle:
            if line.strip():
                break
            n += 1
        return n


def _read_csv(p: Path, lead: int) -> pd.DataFrame:
    """All cells as text, one row per line. Rows that end in a comma (as spreadsheets export) would make pandas
    take the first column as the index and shift every column by one: index_col=False. A row with more values
    than the header has columns would then lose them quietly: it is an error, naming the row."""
    opts = dict(dtype=str, keep_default_na=False, na_values=[""], compression="infer", index_col=False,
                skip_blank_lines=False, skiprows=lead)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        try:
            return pd.read_csv(p, **opts)
        except pd.errors.ParserWarning:  # on the first data row
            extra = _first_row_with_extra_values(p, lead)
        except pd.errors.ParserError:  # on a later row: pandas counts records, not lines
            extra = _first_row_with_extra_values(p, lead)
            if extra is None:
                raise
    if extra is not None:
        line, n_values, n_columns = extra
        raise BadInput(p, f"{n_values} values but the header names {n_columns} columns; remove the extra values "
                       "or name their columns in the header", row=line)
    with warnings.catch_warnings():  # only empty cells beyond the header's columns (",,"): nothing is lost
        warnings.simplefilter("ignore", pd.errors.ParserWarning)
        return pd.read_csv(p, **opts)


def _first_row_with_extra_values(p: Path, lead: int) -> tuple[int, int, int] | None:
    with _open_text(p) as h:
        reader = csv.reader(h.handle)
        for _ in range(lead):
            next(h.handle, None)
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header) and any(v.strip() for v in row[len(header):]):
                return lead + reader.line_num, len(row), len(header)
    return None


def _drop_blank_rows(df: pd.DataFrame, header_line: int) -> pd.DataFrame:
    """Without the rows that are blank lines (or only empty cells), remembering their lines for `file_row`."""
    if df.empty or len(df.columns) == 0:
        return df
    first = df.iloc[:, 0]
    maybe = first.isna() | (first.str.strip() == "")  # cheap pre-filter: only such rows can be all empty
    if maybe.any():
        sub = df[maybe.to_numpy()]
        empty = sub.apply(lambda c: c.isna() | (c.str.strip() == "")).all(axis=1)
        blank = [int(i) for i in sub.index[empty.to_numpy()]]
    else:
        blank = []
    if blank:
        df = df.drop(index=blank).reset_index(drop=True)
    if blank or header_line != 1:
        df.attrs[_LINES] = (header_line, tuple(header_line + 1 + i for i in blank))
    return df


def parse_times(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """ISO 8601 strings to UTC timestamps; a value without an offset is UTC."""
    raw = values.astype("string")
    missing = raw.isna() | (raw.str.strip() == "")
    if missing.any():
        raise BadInput(path, "empty time", row=file_row(values, int(np.flatnonzero(missing.to_numpy())[0])),
                       column=column)
    parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
    bad = parsed.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise BadInput(path, f"cannot parse time {raw.iloc[i]!r} (ISO 8601 expected)", row=file_row(values, i),
                       column=column)
    return parsed


# what spreadsheets and other tools write for a missing value, which CONTRACTS.md writes as an empty cell
MISSING_WORDS = frozenset({"NA", "NAN", "N/A", "NULL", "NONE", "-", "--"})


def parse_numbers(values: pd.Series, path: str | Path, column: str) -> pd.Series:
    """Numbers or empty cells (NaN); anything else, or ±inf, is bad input."""
    raw = values.astype("string").str.strip()
    out = pd.to_numeric(raw, errors="coerce")
    bad = (out.isna() & raw.notna() & (raw != "")) | np.isinf(out.astype(float).fillna(0.0))
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        hint = "; write a missing value as an empty cell" if str(raw.iloc[i]).upper() in MISSING_WORDS else ""
        raise BadInput(path, f"not a finite number: {raw.iloc[i]!r}{hint}", row=file_row(values, i), column=column)
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
