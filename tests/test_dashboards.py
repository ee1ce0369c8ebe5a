"""Every Grafana panel query, as checked in under provisioning/, runs against a real database that the
simulated city filled through the real ingest code, and returns the shape its panel expects.

Provisioning is tested against a local stand-in for Grafana's HTTP API (Grafana cannot be installed
here): idempotent pushes, and clear errors for a wrong URL and a wrong token.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from shared.dashboards import build, macros
from shared.dashboards.provision import PROVISIONING, ProvisionError, drift, provisioning_files, push

pytestmark = pytest.mark.stack

TIME_OIDS = {1184, 1114, 1700, 701}  # timestamptz, timestamp, numeric / float8 (epoch seconds)
NUMERIC_OIDS = {20, 21, 23, 700, 701, 1700}
TEXT_OIDS = {25, 1043, 19}


@pytest.fixture(scope="module")
def filled(db_url: str) -> dict:
    from shared.dashboards import fill

    sim = fill.simulate(8.0, 11)
    counts = fill.fill(db_url, sim)
    counts.update(fill.fill_air_products(db_url, sim))
    assert counts["observations"] > 1000
    return counts


def checked_in_dashboards() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((PROVISIONING / "dashboards" / "json").glob("*.json"))]


def variable_values(conn: psycopg.Connection) -> dict[str, list[str]]:
    out = {k: [r[0] for r in conn.execute(sql).fetchall()] for k, sql in build.TEST_VARIABLES_SQL.items()}
    return {**out, **build.TEST_VARIABLES_FIXED}


def check_target(
    conn: psycopg.Connection,
    sql: str,
    shape: build.Shape,
    *,
    start: datetime,
    end: datetime,
    variables: dict[str, list[str]],
    timescaledb: bool = False,
) -> int:
    """Run one panel query as Grafana would; fail unless it returns `shape`. Returns the row count."""
    expanded = macros.expand(sql, start=start, end=end, variables=variables, timescaledb=timescaledb)
    with conn.cursor() as cur:
        try:
            cur.execute(expanded)
        except psycopg.Error as exc:
            conn.rollback()
            raise AssertionError(f"panel SQL failed: {exc}\n{expanded}") from exc
        cols = {d.name: d.type_code for d in cur.description}
        rows = cur.fetchall()
    conn.rollback()
    want = ([shape.time] if shape.time else []) + list(shape.values) + list(shape.labels)
    assert sorted(want) == sorted(cols), f"columns {sorted(cols)} != expected {sorted(want)}\n{expanded}"
    if shape.time:
        assert cols[shape.time] in TIME_OIDS, f"time column {shape.time!r} has type oid {cols[shape.time]}"
    for v in shape.values:
        assert cols[v] in NUMERIC_OIDS, f"value column {v!r} has type oid {cols[v]}, not a number"
    for lab in shape.labels:
        assert cols[lab] in TEXT_OIDS, f"label column {lab!r} has type oid {cols[lab]}, not text"
    if shape.rows_from_simulator:
        assert rows, f"no rows, though the simulator fills this table:\n{expanded}"
        names = list(cols)
        for v in shape.values:
            assert any(r[names.index(v)] is not None for r in rows), f"{v!r} is NULL in every row"
    return len(rows)


def run_all(conn, dashboards: list[dict], start, end, timescaledb=False) -> dict[str, int]:
    shapes = build.shapes()
    variables = variable_values(conn)
    counts = {}
    for d in dashboards:
        for p in d["panels"]:
            for t in p["targets"]:
                key = (d["uid"], p["id"], t["refId"])
                counts[f"{d['uid']}/{p['title']}/{t['refId']}"] = check_target(
                    conn,
                    t["rawSql"],
                    shapes[key],
                    start=start,
                    end=end,
                    variables=variables,
                    timescaledb=timescaledb,
                )
    return counts


def test_every_panel_query_returns_its_shape(db_url, filled):
    dashboards = checked_in_dashboards()
    assert {d["uid"] for d in dashboards} == {d.uid for d in build.DASHBOARDS}
    with psycopg.connect(db_url) as conn:
        counts = run_all(
            conn, dashboards, filled["start"] - timedelta(hours=1), filled["end"] + timedelta(hours=1)
        )
    assert len(counts) == len(build.shapes()) >= 20
    with_rows = [k for k, n in counts.items() if n]
    print(f"{len(counts)} panel queries ran; {len(with_rows)} returned rows")
    assert len(with_rows) >= 7


def test_a_broken_panel_fails(db_url, filled):
    start, end = filled["start"], filled["end"]
    for breakage in (
        lambda s: s.replace("avg(value) AS value", "avg(valu) AS value", 1),  # wrong column
        lambda s: s.replace("AS metric", "AS station", 1),  # wrong shape
        lambda s: s.replace("quantity IN ($pollutant)", "quantity IN ($pollutants)", 1),
    ):  # unknown var
        dashboards = copy.deepcopy(checked_in_dashboards())
        eco = next(d for d in dashboards if d["uid"] == "cityops-ecology")
        trend = eco["panels"][1]
        trend["targets"][0]["rawSql"] = breakage(trend["targets"][0]["rawSql"])
        with psycopg.connect(db_url) as conn, pytest.raises((AssertionError, macros.MacroError)):
            run_all(conn, [eco], start, end)


def test_a_query_that_returns_nothing_fails_where_the_simulator_fills_the_table(db_url, filled):
    sql = build.ECOLOGY.panels[1].queries[0].sql.replace("domain = 'air'", "domain = 'nowhere'")
    with psycopg.connect(db_url) as conn, pytest.raises(AssertionError, match="no rows"):
        check_target(
            conn,
            sql,
            build.ECOLOGY.panels[1].queries[0].shape,
            start=filled["start"],
            end=filled["end"],
            variables=variable_values(conn),
        )


def test_personal_data_never_reaches_a_panel():
    for d in checked_in_dashboards():
        for p in d["panels"]:
            for t in p["targets"]:
                assert "restricted." not in t["rawSql"] and "worker_id" not in t["rawSql"], p["title"]


def test_titles_are_bilingual():
    for d in checked_in_dashboards():
        for title in [d["title"], *(p["title"] for p in d["panels"])]:
            zh, _, en = title.partition(" / ")
            assert any("\u4e00" <= c <= "\u9fff" for c in zh), title
            assert en[:1].isascii() and en[:1].isalpha() and not any("\u4e00" <= c <= "\u9fff" for c in en), (
                title
            )


def test_macros_expand_as_grafana_does():
    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    end = start + timedelta(hours=6)
    sql = "SELECT $__timeGroupAlias(time, '5m'), 1 WHERE $__timeFilter(time) AND d IN ($district) AND t > $__timeFrom()"
    plain = macros.expand(sql, start=start, end=end, variables={"district": ["d01", "o'x"]})
    assert plain == (
        'SELECT floor(extract(epoch from time)/300)*300 AS "time", 1 WHERE time BETWEEN '
        "'2026-01-02T03:04:05.000000Z' AND '2026-01-02T09:04:05.000000Z' AND d IN ('d01','o''x') "
        "AND t > '2026-01-02T03:04:05.000000Z'"
    )
    ts = macros.expand("SELECT $__timeGroup(time, 1h)", start=start, end=end, timescaledb=True)
    assert ts == "SELECT time_bucket('3600s',time)"
    with pytest.raises(macros.MacroError, match="not supported"):
        macros.expand("SELECT $__unixEpochFilter(t)", start=start, end=end)


def test_provisioning_files_are_generated_and_in_step(tmp_path):
    assert drift() == [], "provisioning/ is out of date: run `cityops grafana files`"
    files = provisioning_files()
    (tmp_path / "dashboards" / "json").mkdir(parents=True)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text.replace("avg(value)", "avg(v)"))
    assert drift(tmp_path), "an edited dashboard file must show as drift"
    assert "$CITYOPS_GRAFANA_DB_PASSWORD" in files["datasources/cityops.yaml"]


# --- provisioning over the HTTP API, against a stand-in that answers like Grafana ---------------------------


class FakeGrafana(BaseHTTPRequestHandler):
    """Answers the handful of Grafana HTTP API calls provisioning makes, as Grafana 11 does."""

    token = "good-token"
    state: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _auth(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._send(401, {"message": "invalid API key", "traceID": ""})
            return False
        return True

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if not self._auth():
            return
        s = self.state
        if self.path.startswith("/api/folders/"):
            uid = self.path.rsplit("/", 1)[1]
            return (
                self._send(200, s["folders"][uid])
                if uid in s["folders"]
                else self._send(404, {"message": "folder not found", "status": "not-found"})
            )
        if self.path.startswith("/api/datasources/uid/"):
            uid = self.path.rsplit("/", 1)[1]
            return (
                self._send(200, s["datasources"][uid])
                if uid in s["datasources"]
                else self._send(404, {"message": "Data source not found"})
            )
        self._send(404, {"message": "Not found"})

    def do_POST(self):
        if not self._auth():
            return
        b, s = self._body(), self.state
        if self.path == "/api/folders":
            s["folders"][b["uid"]] = b
            return self._send(200, {**b, "id": len(s["folders"])})
        if self.path == "/api/datasources":
            s["datasources"][b["uid"]] = b
            return self._send(200, {"datasource": b, "id": 1, "message": "Datasource added"})
        if self.path == "/api/dashboards/db":
            assert b["overwrite"] is True and b["folderUid"] == build.FOLDER_UID
            d = b["dashboard"]
            s["dashboards"][d["uid"]] = d
            s["dashboard_writes"] += 1
            return self._send(200, {"uid": d["uid"], "status": "success", "version": s["dashboard_writes"]})
        self._send(404, {"message": "Not found"})

    def do_PUT(self):
        if not self._auth():
            return
        b, s = self._body(), self.state
        if self.path.startswith("/api/folders/"):
            s["folders"][self.path.rsplit("/", 1)[1]].update(b)
            return self._send(200, b)
        if self.path.startswith("/api/datasources/uid/"):
            s["datasources"][self.path.rsplit("/", 1)[1]] = b
            return self._send(200, {"message": "Datasource updated"})
        self._send(404, {"message": "Not found"})


@pytest.fixture
def grafana():
    FakeGrafana.state = {"folders": {}, "datasources": {}, "dashboards": {}, "dashboard_writes": 0}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeGrafana.state
    server.shutdown()


def test_provision_is_idempotent(grafana):
    url, state = grafana
    first = push(url, "good-token", datasource=build.datasource())
    assert first["folder"] == "created" and first["datasource"] == "created"
    second = push(url, "good-token", datasource=build.datasource(timescaledb=True))
    assert second["folder"] == "updated" and second["datasource"] == "updated"
    assert set(state["dashboards"]) == {d.uid for d in build.DASHBOARDS}
    assert len(state["folders"]) == 1 and len(state["datasources"]) == 1
    assert state["datasources"][build.DATASOURCE_UID]["jsonData"]["timescaledb"] is True


def test_provision_wrong_token_says_so(grafana, capsys):
    from shared.cli import main

    url, _ = grafana
    with pytest.raises(ProvisionError, match="refused the token"):
        push(url, "wrong", datasource=build.datasource())
    assert main(["grafana", "provision", "--url", url, "--token", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "service-account token" in err and "Traceback" not in err


def test_provision_wrong_url_says_so(capsys):
    from shared.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ProvisionError, match="cannot reach Grafana"):
        push(url, "t", datasource=build.datasource(), timeout=5)
    assert main(["grafana", "provision", "--url", url, "--token", "t"]) == 1
    assert "check the URL" in capsys.readouterr().err


def test_generated_json_matches_checked_in(tmp_path):
    assert [
        json.loads(provisioning_files()[f"dashboards/json/{d['uid']}.json"]) for d in checked_in_dashboards()
    ] == checked_in_dashboards()
    assert Path(PROVISIONING / "datasources" / "cityops.yaml").exists()


# --- what "open" means on the incident and leak tables ---------------------------------------------------------


def _panel_rows(conn: psycopg.Connection, uid: str, table: str, start: datetime, end: datetime) -> list[dict]:
    """The rows the checked-in table panel listing `table` shows for this time range, as Grafana runs it."""
    dashboard = next(d for d in checked_in_dashboards() if d["uid"] == uid)
    panel = next(p for p in dashboard["panels"] if p["type"] == "table" and f"FROM {table}" in p["targets"][0]["rawSql"])
    sql = macros.expand(panel["targets"][0]["rawSql"], start=start, end=end, variables=variable_values(conn))
    with conn.cursor() as cur:
        cur.execute(sql)
        names = [d.name for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    conn.rollback()
    return rows


def test_a_resolved_incident_is_not_listed_as_open(db_url):
    """Before, the Incidents panel kept every incident ever opened on screen whatever the time range: it left out
    `status = 'closed'`, a state incidents never take (they end `resolved`, then `reported`). Now an incident
    opened before the time range is listed only while it is still open."""
    import asyncio

    from schemas.products import Incident
    from services.emergency import repository

    assert set(build.INCIDENT_CLOSED) < set(Incident.model_fields["status"].annotation.__args__)
    now = datetime.now(UTC)
    days_ago = now - timedelta(days=3)

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            for incident_id, status, opened in (("inc-test-old-resolved", "resolved", days_ago),
                                                ("inc-test-old-reported", "reported", days_ago),
                                                ("inc-test-old-on-site", "on_site", days_ago),
                                                ("inc-test-new-resolved", "resolved", now)):
                inc = Incident(incident_id=incident_id, kind="gas_release", status=status, severity="major",
                               title_zh="燃气泄漏", title_en="Gas release", opened_at=opened, updated_at=opened)
                await repository.upsert_incident(conn, inc, [(status, opened, "")])
            await conn.commit()

    asyncio.run(write())
    with psycopg.connect(db_url) as conn:
        rows = _panel_rows(conn, "cityops-emergency", "incidents", now - timedelta(hours=1), now + timedelta(hours=1))
    listed = {r["incident_id"] for r in rows if r["incident_id"].startswith("inc-test-")}
    assert listed == {"inc-test-old-on-site", "inc-test-new-resolved"}


def test_a_leak_is_open_until_its_alert_is_resolved(db_url):
    """Before, the "Active leaks" panel left out `leaks.status = 'closed'`, which nothing ever writes: a repaired
    leak stayed active for ever (within the time range). Now a leak is open until a dispatcher resolves its
    alert (the rule the water service uses after a restart): open ones are listed whatever the time range,
    resolved ones only in the range they were detected in, marked resolved."""
    import asyncio

    from services.water import repository as water
    from shared.notify import repository as notify

    now = datetime.now(UTC)
    days_ago = now - timedelta(days=3)
    leaks = (("leak-test-old-repaired", days_ago, True), ("leak-test-old-open", days_ago, False),
             ("leak-test-new-repaired", now, True))

    async def write() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            rows = []
            for leak_id, detected, _ in leaks:
                await water.upsert_leak(conn, leak_id=leak_id, detected_at=detected, pipe_id="p-1",
                                        candidates=[{"pipe_id": "p-1", "rank": 1}], flow_m3h=12.0, dma="dma-1",
                                        kind="burst")
                rows.append({"alert_id": f"alert-{leak_id}", "domain": "water", "kind": "leak", "severity": "major",
                             "level": None, "status": "open", "title_zh": "管网漏损", "title_en": "Water leak",
                             "message_zh": "漏损", "message_en": "Leak", "lat": None, "lon": None, "district": None,
                             "dedup_key": f"water:leak:{leak_id}", "raised_at": detected,
                             "evidence": {"leak_id": leak_id}, "repeat_count": 0, "last_seen_at": detected,
                             "rule": None, "updated_at": detected})
            async with conn.cursor() as cur:
                await notify.insert_alerts(cur, rows)
            await conn.commit()
            for leak_id, _, repaired in leaks:
                if repaired:
                    assert await notify.resolve_alert(conn, f"alert-{leak_id}", "dispatcher-1", "dispatcher", "fixed")

    asyncio.run(write())
    with psycopg.connect(db_url) as conn:
        rows = _panel_rows(conn, "cityops-water", "leaks", now - timedelta(hours=1), now + timedelta(hours=1))
    listed = {r["leak_id"]: r.get("state") for r in rows if r["leak_id"].startswith("leak-test-")}
    assert listed == {"leak-test-old-open": "open", "leak-test-new-repaired": "resolved"}
