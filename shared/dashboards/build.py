"""The four bureau dashboards (ecology, water, weather, emergency) and their data source, as Grafana JSON.

Every panel query is raw SQL against the tables of shared/storage/migrations, with Grafana's
PostgreSQL macros (`$__timeFilter`, `$__timeGroupAlias`). Each query declares the shape it must
return (`Shape`): tests/test_dashboards.py expands the macros as Grafana does and runs every query
against a database the simulator filled. Personal data (restricted.worker_observations) is never
read here; worker alerts show kind, grade and district only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE_UID = "cityops-pg"
DATASOURCE_NAME = "CityOps PostgreSQL/TimescaleDB"
FOLDER_UID = "cityops"
FOLDER_TITLE = "CityOps 城市运行 / City operations"
SCHEMA_VERSION = 39
# The states an incident ends in: the crew's work is done (schemas/products.py Incident.status; the order is
# services/emergency/domain/incidents.py). Any other state is open.
INCIDENT_CLOSED = ("resolved", "reported")
_INCIDENT_CLOSED_SQL = ", ".join(f"'{state}'" for state in INCIDENT_CLOSED)


@dataclass(frozen=True)
class Shape:
    """What a query returns: a time column (or None for tables), numeric value columns, text label columns."""

    time: str | None
    values: tuple[str, ...]
    labels: tuple[str, ...] = ()
    # the test's fill (simulated readings through the ingest code, plus the air domain's grid and source
    # tracing run on them: shared/dashboards/fill.py) writes this table, so the query must return rows
    rows_from_simulator: bool = False


@dataclass(frozen=True)
class Query:
    sql: str
    shape: Shape
    fmt: str = "time_series"  # or "table"


@dataclass(frozen=True)
class Panel:
    title_zh: str
    title_en: str
    kind: str  # Grafana panel type
    queries: tuple[Query, ...]
    width: int = 12
    height: int = 8
    unit: str | None = None
    description: str = ""

    @property
    def title(self) -> str:
        return f"{self.title_zh} / {self.title_en}"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title_zh: str
    title_en: str
    tags: tuple[str, ...]
    panels: tuple[Panel, ...]
    variables: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def title(self) -> str:
        return f"{self.title_zh} / {self.title_en}"


def _district_var() -> dict[str, Any]:
    return {
        "name": "district",
        "label": "区 / District",
        "type": "query",
        "multi": True,
        "includeAll": True,
        "datasource": {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID},
        "query": "SELECT DISTINCT district FROM sensors WHERE district IS NOT NULL ORDER BY 1",
        "definition": "SELECT DISTINCT district FROM sensors WHERE district IS NOT NULL ORDER BY 1",
        "refresh": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def _pollutant_var() -> dict[str, Any]:
    options = ["pm25", "pm10", "no2", "o3"]
    return {
        "name": "pollutant",
        "label": "污染物 / Pollutant",
        "type": "custom",
        "multi": False,
        "includeAll": False,
        "query": ",".join(options),
        "current": {"selected": True, "text": "pm25", "value": "pm25"},
        "options": [{"selected": o == "pm25", "text": o, "value": o} for o in options],
    }


# Values the test gives the template variables (all districts of the simulated city are real values).
TEST_VARIABLES_SQL = {"district": "SELECT DISTINCT district FROM sensors WHERE district IS NOT NULL"}
TEST_VARIABLES_FIXED = {"pollutant": ["pm25"]}

TS = Shape  # short alias for the tables below

ECOLOGY = Dashboard(
    uid="cityops-ecology",
    title_zh="生态环境局",
    title_en="Ecological bureau",
    tags=("cityops", "air"),
    variables=(_district_var(), _pollutant_var()),
    panels=(
        Panel(
            "网格空气质量指数地图",
            "AQI map of the grid",
            "geomap",
            (
                Query(
                    """SELECT cell_id, lat AS latitude, lon AS longitude, aqi, value, district
FROM air_grid
WHERE pollutant = 'pm25'
  AND valid_at = (SELECT max(valid_at) FROM air_grid WHERE pollutant = 'pm25' AND $__timeFilter(valid_at))""",
                    TS(
                        None,
                        ("latitude", "longitude", "aqi", "value"),
                        ("cell_id", "district"),
                        rows_from_simulator=True,
                    ),
                    "table",
                ),
            ),
            description="Latest 以算代测 grid estimate of PM2.5 in the time range, AQI per HJ 633-2012.",
        ),
        Panel(
            "各区污染物趋势",
            "Pollutant trend per district",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '1h'), district AS metric, avg(value) AS value
FROM observations
WHERE domain = 'air' AND quantity IN ($pollutant) AND qc IN (1, 2)
  AND $__timeFilter(time) AND district IN ($district)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            unit="conμgm3",
        ),
        Panel(
            "超标站点小时数",
            "Exceedance hours (PM2.5 hourly mean > 75 μg/m³)",
            "barchart",
            (
                Query(
                    """SELECT $__timeGroupAlias(bucket, '1h'), district AS metric,
       count(DISTINCT sensor_id) FILTER (WHERE avg_value > 75)::int AS value
FROM observations_hourly
WHERE domain = 'air' AND quantity = 'pm25' AND $__timeFilter(bucket) AND district IN ($district)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            description="Sensors whose hourly mean PM2.5 exceeds the GB 3095-2012 grade II 24-hour limit.",
        ),
        Panel(
            "溯源结果",
            "Source tracing results",
            "table",
            (
                Query(
                    """SELECT at AS "time", station_id, pollutant, source_id, contribution, confidence, rank
FROM source_attributions
WHERE $__timeFilter(at) AND pollutant IN ($pollutant)
ORDER BY at DESC, station_id, rank
LIMIT 200""",
                    TS(
                        "time",
                        ("contribution", "confidence", "rank"),
                        ("station_id", "pollutant", "source_id"),
                        rows_from_simulator=True,
                    ),
                    "table",
                ),
            ),
        ),
        Panel(
            "巡查任务状态",
            "Inspection task status",
            "piechart",
            (
                Query(
                    """SELECT status AS metric, count(*)::int AS value
FROM field_tasks
WHERE domain = 'air' AND $__timeFilter(created_at)
GROUP BY 1
ORDER BY 1""",
                    TS(None, ("value",), ("metric",)),
                    "table",
                ),
            ),
        ),
    ),
)

WATER = Dashboard(
    uid="cityops-water",
    title_zh="供排水",
    title_en="Water utility",
    tags=("cityops", "water"),
    variables=(_district_var(),),
    panels=(
        Panel(
            "计量分区流量",
            "DMA inflow",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '15m'), sensor_id AS metric, avg(value) AS value
FROM observations
WHERE domain = 'water' AND quantity = 'flow' AND qc IN (1, 2) AND $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            unit="m3/h",
        ),
        Panel(
            "夜间最小流量",
            "Minimum night flow (02:00–04:00 local)",
            "barchart",
            (
                Query(
                    """SELECT date_trunc('day', time AT TIME ZONE 'Asia/Shanghai') AT TIME ZONE 'Asia/Shanghai' AS "time",
       sensor_id AS metric, min(value) AS value
FROM observations
WHERE domain = 'water' AND quantity = 'flow' AND qc IN (1, 2) AND $__timeFilter(time)
  AND extract(hour FROM time AT TIME ZONE 'Asia/Shanghai') BETWEEN 2 AND 3
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",)),
                ),
            ),
            unit="m3/h",
            description="Rising minimum night flow is the classic sign of a growing leak.",
        ),
        Panel(
            "管网压力",
            "Network pressure",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '15m'), district AS metric, avg(value) AS value,
       min(value) AS min_value
FROM observations
WHERE domain = 'water' AND quantity = 'pressure' AND qc IN (1, 2) AND $__timeFilter(time)
  AND district IN ($district)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value", "min_value"), ("metric",), rows_from_simulator=True),
                ),
            ),
            unit="pressurem",
        ),
        Panel(
            "漏损及候选管段",
            "Leaks and candidate pipes",
            "table",
            (
                Query(
                    # open until a dispatcher resolves the leak's alert (the rule the water service itself
                    # uses after a restart); leaks.status is written once, 'open', and never changes
                    """WITH leak_alerts AS (
    SELECT evidence->>'leak_id' AS leak_id, bool_and(resolved_at IS NOT NULL) AS resolved
    FROM alerts
    WHERE domain = 'water' AND kind = 'leak' AND evidence->>'leak_id' IS NOT NULL
    GROUP BY 1
)
SELECT l.detected_at AS "time", l.leak_id, l.pipe_id, l.dma, l.kind,
       CASE WHEN a.resolved THEN 'resolved' ELSE 'open' END AS state, l.estimated_flow_m3h,
       jsonb_array_length(l.candidates)::int AS n_candidates, l.candidates::text AS candidates
FROM leaks l LEFT JOIN leak_alerts a USING (leak_id)
WHERE $__timeFilter(l.detected_at) OR a.resolved IS NOT TRUE
ORDER BY a.resolved IS TRUE, l.detected_at DESC""",
                    TS(
                        "time",
                        ("estimated_flow_m3h", "n_candidates"),
                        ("leak_id", "pipe_id", "dma", "kind", "state", "candidates"),
                    ),
                    "table",
                ),
            ),
            description="Every leak still open, and those detected in the time range. A leak is open until "
            "its alert is resolved in the dispatcher console after the repair.",
        ),
        Panel(
            "各汇水区内涝风险",
            "Flood risk per catchment",
            "table",
            (
                Query(
                    """SELECT DISTINCT ON (district) raised_at AS "time", district, level, severity, title_zh, title_en
FROM alerts
WHERE domain = 'water' AND kind LIKE '%flood%' AND resolved_at IS NULL AND $__timeFilter(raised_at)
ORDER BY district, raised_at DESC""",
                    TS("time", (), ("district", "level", "severity", "title_zh", "title_en")),
                    "table",
                ),
            ),
        ),
        Panel(
            "排水与河道水位",
            "Drain and river levels",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '15m'), sensor_id AS metric, max(value) AS value
FROM observations
WHERE domain = 'water' AND quantity = 'water_level' AND qc IN (1, 2) AND $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            unit="lengthm",
        ),
    ),
)

WEATHER = Dashboard(
    uid="cityops-weather",
    title_zh="气象",
    title_en="Weather",
    tags=("cityops", "weather"),
    panels=(
        Panel(
            "临近预报与实况",
            "Nowcast vs observed (temperature, 1 h ahead)",
            "timeseries",
            (
                Query(
                    """SELECT valid_at AS "time", station_id || ' nowcast' AS metric, value, p10, p90
FROM forecasts
WHERE domain = 'weather' AND variable = 'temp' AND horizon_h = 1 AND $__timeFilter(valid_at)
ORDER BY 1""",
                    TS("time", ("value", "p10", "p90"), ("metric",)),
                ),
                Query(
                    """SELECT $__timeGroupAlias(time, '10m'), sensor_id || ' observed' AS metric, avg(value) AS value
FROM observations
WHERE quantity = 'temp' AND domain IN ('weather', 'air') AND qc IN (1, 2) AND $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            width=24,
            unit="celsius",
        ),
        Panel(
            "生效中的预警信号",
            "Active warning signals",
            "table",
            (
                Query(
                    """SELECT raised_at AS "time", district, kind, level, severity, title_zh, title_en
FROM alerts
WHERE domain = 'weather' AND resolved_at IS NULL AND $__timeFilter(raised_at)
ORDER BY raised_at DESC""",
                    TS("time", (), ("district", "kind", "level", "severity", "title_zh", "title_en")),
                    "table",
                ),
            ),
        ),
        Panel(
            "气象公报",
            "Bulletins",
            "table",
            (
                Query(
                    """SELECT issued_at AS "time", district, text_zh, text_en, jsonb_array_length(signals)::int AS n_signals
FROM bulletins
WHERE $__timeFilter(issued_at)
ORDER BY issued_at DESC
LIMIT 50""",
                    TS("time", ("n_signals",), ("district", "text_zh", "text_en")),
                    "table",
                ),
            ),
        ),
    ),
)

EMERGENCY = Dashboard(
    uid="cityops-emergency",
    title_zh="应急管理",
    title_en="Emergency office",
    tags=("cityops", "emergency"),
    panels=(
        Panel(
            "事件",
            "Incidents",
            "table",
            (
                Query(
                    # incidents opened in the time range, and every one still open from before
                    f"""SELECT opened_at AS "time", incident_id, kind, status, severity, title_zh, title_en,
       jsonb_array_length(related_alert_ids)::int AS n_alerts
FROM incidents
WHERE ($__timeFilter(opened_at) OR status NOT IN ({_INCIDENT_CLOSED_SQL}))
ORDER BY opened_at DESC""",
                    TS(
                        "time",
                        ("n_alerts",),
                        ("incident_id", "kind", "status", "severity", "title_zh", "title_en"),
                    ),
                    "table",
                ),
            ),
            width=24,
        ),
        Panel(
            "事件时间线",
            "Incident timeline",
            "state-timeline",
            (
                Query(
                    """SELECT e.at AS "time", i.incident_id AS metric, e.status AS value
FROM incident_events e JOIN incidents i USING (incident_id)
WHERE $__timeFilter(e.at)
ORDER BY 1""",
                    TS("time", (), ("metric", "value")),
                    "table",
                ),
            ),
        ),
        Panel(
            "设备健康评分",
            "Equipment health score",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '5m'), machine_id AS metric, max(score) AS value
FROM equipment_health
WHERE $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",)),
                ),
            ),
        ),
        Panel(
            "泵站运行参数",
            "Pump vibration (raw)",
            "timeseries",
            (
                Query(
                    """SELECT $__timeGroupAlias(time, '5m'), sensor_id AS metric, avg(value) AS value
FROM observations
WHERE domain = 'equipment' AND quantity = 'vibration_rms_mms' AND qc IN (1, 2) AND $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",), rows_from_simulator=True),
                ),
            ),
            unit="velocitymms",
        ),
        Panel(
            "作业人员安全告警（不含个人信息）",
            "Worker safety alerts (no personal data)",
            "table",
            (
                Query(
                    """SELECT raised_at AS "time", kind, severity, level, district, status, title_zh, title_en
FROM alerts
WHERE domain IN ('emergency', 'safety') AND $__timeFilter(raised_at)
  AND kind IN ('gas_h2s', 'gas_co', 'gas_lel', 'o2_low', 'o2_high', 'heart_rate', 'fall', 'man_down', 'sos',
               'restricted_entry')
ORDER BY raised_at DESC""",
                    TS(
                        "time",
                        (),
                        ("kind", "severity", "level", "district", "status", "title_zh", "title_en"),
                    ),
                    "table",
                ),
            ),
            width=24,
            description="Kind, grade and district only: the worker, the position and the readings stay in "
            "the restricted schema.",
        ),
        Panel(
            "死信（按原因）",
            "Dead letters by reason",
            "barchart",
            (
                Query(
                    """SELECT $__timeGroupAlias(received_at, '1h'), reason_code AS metric, count(*)::int AS value
FROM dead_letters
WHERE $__timeFilter(received_at)
GROUP BY 1, 2
ORDER BY 1""",
                    TS("time", ("value",), ("metric",)),
                ),
            ),
        ),
    ),
)

DASHBOARDS: tuple[Dashboard, ...] = (ECOLOGY, WATER, WEATHER, EMERGENCY)


def datasource(
    *,
    host: str = "postgres:5432",
    database: str = "cityops",
    user: str = "grafana_reader",
    timescaledb: bool = False,
    password: str | None = None,
) -> dict[str, Any]:
    """The PostgreSQL data source; `timescaledb` makes Grafana's $__timeGroup use time_bucket()."""
    ds: dict[str, Any] = {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": "grafana-postgresql-datasource",
        "access": "proxy",
        "url": host,
        "user": user,
        "database": database,
        "isDefault": True,
        "jsonData": {
            "database": database,
            "sslmode": "disable",
            "postgresVersion": 1500,
            "timescaledb": timescaledb,
            "timeInterval": "1m",
        },
    }
    if password is not None:
        ds["secureJsonData"] = {"password": password}
    return ds


def _panel_json(p: Panel, pid: int, x: int, y: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "gridPos": {"h": p.height, "w": p.width, "x": x, "y": y},
        "datasource": {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID},
                "editorMode": "code",
                "format": q.fmt,
                "rawQuery": True,
                "rawSql": q.sql,
            }
            for i, q in enumerate(p.queries)
        ],
        "fieldConfig": {"defaults": {"unit": p.unit} if p.unit else {}, "overrides": []},
        "options": {},
    }
    if p.kind == "geomap":
        out["options"] = {
            "view": {"id": "fit"},
            "layers": [
                {
                    "type": "heatmap",
                    "name": "AQI",
                    "config": {"weight": {"field": "aqi", "fixed": 1, "max": 300, "min": 0}},
                    "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                }
            ],
        }
    return out


def dashboard_json(d: Dashboard) -> dict[str, Any]:
    panels, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(d.panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        panels.append(_panel_json(p, i, x, y))
        x += p.width
        row_h = max(row_h, p.height)
    return {
        "uid": d.uid,
        "title": d.title,
        "tags": list(d.tags),
        "timezone": "browser",
        "editable": True,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": list(d.variables)},
        "panels": panels,
    }


def all_dashboards() -> list[dict[str, Any]]:
    return [dashboard_json(d) for d in DASHBOARDS]


def shapes() -> dict[tuple[str, int, str], Shape]:
    """(dashboard uid, panel id, refId) -> the shape its query must return."""
    return {
        (d.uid, i, chr(ord("A") + j)): q.shape
        for d in DASHBOARDS
        for i, p in enumerate(d.panels, start=1)
        for j, q in enumerate(p.queries)
    }
