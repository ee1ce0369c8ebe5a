"""The main job, end to end: `cityops demo` accounts for every message it published."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_demo_accounts_for_every_message(demo_db):
    s = demo_db["summary"]
    from shared.demo.cli import exit_code

    # the exit status says whether the run was good: accounted, settled and every checked scenario detected
    assert demo_db["returncode"] == exit_code(s), (demo_db["out_dir"] / "demo-stdout.log").read_text()[-3000:]
    assert s["accounted"] is True
    assert s["accepted_to_kafka"] + s["dead_lettered"] == s["published_total"] > 1000
    assert s["rows_stored"] == s["readings_expected"]
    # the misbehaving gateway's messages are dead-lettered with their reasons
    assert s["published"]["bad_input"] == s["dead_lettered"] == sum(s["dead_letters_by_reason"].values())
    assert s["latency"]["sensor_publish_to_kafka"]["n"] > 0


# Every scenario the simulator injects: an air episode traced to its source and drifting low-cost sensors,
# the burst and the growing leak, the flood warnings, the rainstorm signal before the peak, stuck and spiking
# weather sensors, the pump fault, the gas release, the fall and the intrusion.
MUST_DETECT = {("air", "pollution_episode"), ("air", "sensor_drift"), ("water", "pipe_burst"),
               ("water", "incipient_leak"), ("water", "rainstorm_flood"), ("weather", "rainstorm"),
               ("weather", "stuck_sensor"), ("weather", "spike"), ("emergency", "equipment_fault"),
               ("emergency", "gas_release"), ("emergency", "worker_fall"), ("emergency", "restricted_entry")}


def test_demo_detects_every_injected_scenario(demo_db):
    s = demo_db["summary"]
    # detection is judged only once every service had handled its input and its work in hand
    assert s["settled"]["settled"] is True, f"services still busy: {s['settled']}"
    for x in s["scenarios"]:
        print(f"{'DETECTED' if x['detected'] else 'missed  '} {x['domain']}/{x['scenario']}: {x.get('note', '')}")
    missed = [f"{x['domain']}/{x['scenario']}: {x.get('note', '')}" for x in s["scenarios"]
              if (x["domain"], x["scenario"]) in MUST_DETECT and x["detected"] is not True]
    assert not missed, "not detected: " + "; ".join(missed)
    assert {(x["domain"], x["scenario"]) for x in s["scenarios"]} >= MUST_DETECT


def test_demo_notifies_through_webhook_email_and_mqtt_with_an_escalation(demo_db):
    n = demo_db["summary"]["notifications"]
    sent = {c["channel"]: c["sent"] for c in n["channels"]}
    assert all(sent.get(ch, 0) > 0 for ch in ("webhook", "email", "mqtt")), sent
    assert n["received"]["webhook_posts"] > 0 and n["received"]["emails"] > 0
    assert len(n["escalations"]) >= 1


def test_demo_opens_incidents_and_writes_their_reports(demo_db):
    """Issue 6: the pump fault and the gas release become incidents, and their reports are on disk."""
    from pathlib import Path

    inc = demo_db["summary"]["incidents"]
    assert {"equipment_fault", "gas_release"} <= {i["kind"] for i in inc}, inc
    written = [i for i in inc if i["report"] and Path(i["report"]).exists()]
    assert any(i["kind"] == "gas_release" for i in written), inc


def test_demo_flood_warnings_rise_with_the_storm_in_the_stored_alerts(demo_db):
    """The water service raises a catchment's warning blue first and then higher as the storm comes; each
    higher colour must reach the stored alert (it once stayed blue: the inbox took every later version of the
    alert for a redelivery of the first)."""
    import psycopg

    s = demo_db["summary"]
    worse = [x for x in s["scenarios"] if x["scenario"] == "rainstorm_flood" and "truth blue" not in x.get("note", "")]
    assert worse, "the demo storm has a catchment above blue"
    with psycopg.connect(demo_db["db_url"]) as conn:
        levels = [r[0] for r in conn.execute("SELECT level FROM alerts WHERE kind = 'flood_risk'")]
    assert set(levels) - {"blue"}, f"stored flood warnings never rose above blue: {levels}"


def test_a_repeated_run_is_told_that_its_alerts_are_already_stored(demo_db):
    """Alert ids are stable, so a second run with the same --end keeps the first run's alert versions: the demo
    says so before it starts. On the test's fresh database there were none; after the run, its own are counted."""
    import json

    import pandas as pd
    import psycopg

    from shared.demo.runner import alerts_in_window

    assert demo_db["summary"]["alerts_stored_before_this_run"] == 0
    starts = [pd.Timestamp(x["start"]) for x in json.loads((demo_db["out_dir"] / "truth.json").read_text())]
    t0, t1 = min(starts) - pd.Timedelta(days=1), max(starts) + pd.Timedelta(days=1)
    with psycopg.connect(demo_db["db_url"]) as conn:
        stored = conn.execute("SELECT count(*) FROM alerts").fetchone()[0]
    assert stored > 0 and alerts_in_window(demo_db["db_url"], t0.to_pydatetime(), t1.to_pydatetime()) == stored
