"""The TimescaleDB variant: every panel query and the API's bucketed history on a REAL TimescaleDB 2.23
(WebAssembly, shared/stack/pglite.py), migrated with the production runner and filled with simulated
readings that went through the real gateway validation and sink row code.

Grafana's data source with `timescaledb: true` turns $__timeGroup into time_bucket(); the same panels
with it off use floor(epoch); both must give the same buckets and values. The API detects TimescaleDB
once and uses time_bucket() there, date_bin() elsewhere: both must agree too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import namedtuple
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from test_dashboards import check_target, checked_in_dashboards

from shared.dashboards import build, macros
from shared.stack.pglite import PGliteTimescale
from shared.storage import migrate, queries

pytestmark = pytest.mark.stack
Record = namedtuple("Record", "topic partition offset value")


@pytest.fixture(scope="module")
def ts():
    """PGlite with TimescaleDB, migrated, with ~3 h of a few sensors per domain (plain INSERTs: no COPY there)."""
    from services.ingest.domain.validate import Accepted, Validator
    from services.ingest.sink import ObservationSink
    from shared.dashboards import fill
    from shared.storage.registry import upsert_sensors

    sim = fill.simulate(8.0, 11)
    keep = {}
    for s in sim.sensors:
        if not s.personal and sum(1 for k in keep.values() if k.kind == s.kind) < 3:
            keep[s.sensor_id] = s
    msgs = sim.messages()
    end = msgs["time"].max()
    msgs = msgs[msgs["sensor_id"].isin(list(keep)) & (msgs["time"] > end - timedelta(hours=3))]
    v = Validator(keep, max_age=timedelta(days=30))
    now = datetime.now(UTC)
    records = []
    for i, (sid, gw, t, vals) in enumerate(
        zip(msgs["sensor_id"], msgs["gateway_id"], msgs["time"], msgs["values"], strict=True)
    ):
        res = v.validate(
            f"city/{gw}/{sid}",
            json.dumps({"sensor_id": sid, "time": t.isoformat(), "values": vals}).encode(),
            now,
        )
        if isinstance(res, Accepted):
            records.append(Record(res.topic, 0, i, res.value))
    rows, _, _ = ObservationSink._rows(None, records, {})  # type: ignore[arg-type]
    with PGliteTimescale() as server, psycopg.connect(server.conninfo, autocommit=True) as conn:
        migrate.migrate(conn)
        upsert_sensors(conn, list(keep.values()))
        for r in rows:
            conn.execute(
                queries.INSERT_OBSERVATION,
                dict(
                    zip(
                        ("time", "sensor_id", "quantity", "value", "unit", "qc", "domain", "district"),
                        r[:8],
                        strict=True,
                    )
                ),
            )
        yield {
            "conn": conn,
            "conninfo": server.conninfo,
            "rows": len(rows),
            "start": (end - timedelta(hours=3)).to_pydatetime(),
            "end": end.to_pydatetime() + timedelta(minutes=1),
        }


def _epoch(t) -> float:
    return t.timestamp() if isinstance(t, datetime) else float(t)


def test_every_panel_runs_on_timescaledb_and_agrees_with_plain_grouping(ts):
    conn, start, end = ts["conn"], ts["start"], ts["end"]
    assert conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    shapes = build.shapes()
    variables = {
        "district": [r[0] for r in conn.execute(build.TEST_VARIABLES_SQL["district"]).fetchall()],
        **build.TEST_VARIABLES_FIXED,
    }
    compared = 0
    for d in checked_in_dashboards():
        for p in d["panels"]:
            for t in p["targets"]:
                shape = shapes[(d["uid"], p["id"], t["refId"])]
                # this database holds observations only (no products): rows are required of those panels
                if "FROM observations" not in t["rawSql"]:
                    shape = dataclasses.replace(shape, rows_from_simulator=False)
                check_target(
                    conn, t["rawSql"], shape, start=start, end=end, variables=variables, timescaledb=True
                )
                if "$__timeGroup" not in t["rawSql"]:
                    continue
                got = {}
                for flag in (True, False):
                    sql = macros.expand(
                        t["rawSql"], start=start, end=end, variables=variables, timescaledb=flag
                    )
                    cur = conn.execute(sql)
                    names = [c.name for c in cur.description]
                    got[flag] = sorted(
                        (
                            _epoch(r[names.index("time")]),
                            *(r[names.index(x)] for x in shape.labels),
                            *(
                                round(float(r[names.index(x)]), 6)
                                for x in shape.values
                                if r[names.index(x)] is not None
                            ),
                        )
                        for r in cur.fetchall()
                    )
                assert got[True] == got[False], f"time_bucket and floor(epoch) disagree for {p['title']}"
                compared += bool(got[True])
    assert compared >= 4, "too few panels had rows to compare"


def test_api_history_time_bucket_equals_date_bin(ts):
    from shared.api import repository

    async def both():
        async with await psycopg.AsyncConnection.connect(ts["conninfo"], autocommit=True) as conn:
            assert await repository.detect_timescale(conn)
            out = {}
            for flag in (True, False):
                out[flag] = await repository.history(
                    conn,
                    timescale=flag,
                    domains=["air"],
                    quantity="pm25",
                    width="15 minutes",
                    start=ts["start"],
                    end=ts["end"],
                    district=None,
                    sensor_id=None,
                    limit=1000,
                    offset=0,
                )
            return out

    ts["conn"].close()  # PGlite serves one connection at a time
    out = asyncio.run(both())
    assert out[True] and out[True] == out[False]
