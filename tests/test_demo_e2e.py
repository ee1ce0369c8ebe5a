"""The main job, end to end: `cityops demo` accounts for every message it published."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_demo_accounts_for_every_message(demo_db):
    s = demo_db["summary"]
    assert demo_db["returncode"] == 0, (demo_db["out_dir"] / "demo-stdout.log").read_text()[-3000:]
    assert s["accounted"] is True
    assert s["accepted_to_kafka"] + s["dead_lettered"] == s["published_total"] > 1000
    assert s["rows_stored"] == s["readings_expected"]
    # the misbehaving gateway's messages are dead-lettered with their reasons
    assert s["published"]["bad_input"] == s["dead_lettered"] == sum(s["dead_letters_by_reason"].values())
    assert s["latency"]["sensor_publish_to_kafka"]["n"] > 0


def test_demo_detects_every_injected_scenario(demo_db):
    s = demo_db["summary"]
    missed = [f"{x['domain']}/{x['scenario']}: {x.get('note', '')}" for x in s["scenarios"] if x["detected"] is not True]
    assert not missed, "not detected: " + "; ".join(missed)
