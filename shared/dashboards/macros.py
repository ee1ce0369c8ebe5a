"""Expand the Grafana PostgreSQL data source macros and template variables the way Grafana does.

Grafana rewrites panel SQL before it reaches the database (pkg/tsdb/grafana-postgresql-datasource/
macros.go). The tests run every panel through this expander against a real database, so only the
macros our panels use are supported — any other `$__macro` is an error, never passed through.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_MACRO = re.compile(r"\$__(\w+)(?:\(([^()]*)\))?")
_VAR = re.compile(r"\$\{?(\w+)\}?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class MacroError(ValueError):
    pass


def interval_seconds(text: str) -> float:
    m = re.fullmatch(r"\s*'?(\d+)([smhd])'?\s*", text)
    if not m:
        raise MacroError(f"interval {text!r} is not like '5m' or '1h': write it as <number><s|m|h|d>")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def expand(
    sql: str,
    *,
    start: datetime,
    end: datetime,
    variables: dict[str, list[str]] | None = None,
    timescaledb: bool = False,
    interval: timedelta = timedelta(minutes=5),
) -> str:
    """SQL as Grafana sends it: macros for the time range [start, end], then `$var` (multi-value
    variables become a quoted, comma-separated list, as Grafana formats them for SQL)."""
    frm, to = f"'{_rfc3339(start)}'", f"'{_rfc3339(end)}'"

    def group(args: list[str]) -> str:
        if len(args) < 2:
            raise MacroError("$__timeGroup needs (column, interval)")
        secs = interval_seconds(args[1])
        if timescaledb:
            return f"time_bucket('{secs:.0f}s',{args[0]})"
        return f"floor(extract(epoch from {args[0]})/{secs:g})*{secs:g}"

    def one(m: re.Match) -> str:
        name, raw = m.group(1), m.group(2)
        args = [a.strip() for a in raw.split(",")] if raw is not None else []
        if name == "timeFilter":
            return f"{args[0]} BETWEEN {frm} AND {to}"
        if name == "timeFrom":
            return frm
        if name == "timeTo":
            return to
        if name == "timeGroup":
            return group(args)
        if name == "timeGroupAlias":
            return group(args) + ' AS "time"'
        if name == "interval":
            return f"{interval.total_seconds():.0f}s"
        raise MacroError(
            f"macro $__{name} is not supported by this expander: add it to shared/dashboards/macros.py"
        )

    out = _MACRO.sub(one, sql)
    variables = variables or {}

    def var(m: re.Match) -> str:
        name = m.group(1)
        if name not in variables:
            raise MacroError(
                f"template variable ${name} has no value: define it in the dashboard's templating"
            )
        return ",".join("'" + v.replace("'", "''") + "'" for v in variables[name])

    return _VAR.sub(var, out)
