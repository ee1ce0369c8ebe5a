"""Simulator → MQTT → gateway → Kafka → sink → database, with exact counts."""

from __future__ import annotations

import asyncio
import secrets

import psycopg
import pytest
from ingest_harness import running, settings_for

from shared.simulator.city import build, publish
from shared.stack.config import StackConfig
from shared.stack.mosquitto import Mosquitto
from shared.storage.registry import upsert_sensors

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]


def test_simulation_is_deterministic_for_a_seed():
    a = build(hours=3, seed=11, domains=["emergency"])
    b = build(hours=3, seed=11, domains=["emergency"], end=a.start + __import__("pandas").Timedelta(hours=3))
    ma, mb = a.messages(), b.messages()
    assert len(ma) == len(mb) > 0
    assert ma["values"].tolist() == mb["values"].tolist()


async def test_every_reading_arrives_exactly_once(stack_env, db_url):
    sim = await asyncio.to_thread(build, hours=4, seed=5, domains=["emergency"])
    # unique gateways and sensors for this test run, so parallel runs cannot interfere
    tok = secrets.token_hex(2)
    for sc in sim.scenarios:
        rename = {s.sensor_id: f"{s.sensor_id}-{tok}" for s in sc.sensors}
        sc.sensors = [s.model_copy(update={"sensor_id": rename[s.sensor_id], "gateway_id": f"{s.gateway_id}-{tok}"})
                      for s in sc.sensors]
        sc.readings = sc.readings.assign(sensor_id=sc.readings["sensor_id"].map(rename))
    sim.bad_messages = []
    with psycopg.connect(db_url) as conn:
        upsert_sensors(conn, sim.sensors)
    mq = Mosquitto(StackConfig.from_env())
    mq.apply(gateways=sim.gateways)
    passwords = {gw: mq.password_for("gateways", gw) for gw in sim.gateways}
    expected = sum(len(sc.readings) for sc in sim.scenarios)
    personal = {s.sensor_id for s in sim.sensors if s.personal}
    expected_personal = sum(int(sc.readings["sensor_id"].isin(personal).sum()) for sc in sim.scenarios)
    s = settings_for(db_url)
    async with running(s) as parts:
        result = await asyncio.to_thread(publish, sim, minutes=0.2, host="127.0.0.1",
                                         port=int(stack_env["CITYOPS_MQTT_PORT"]), passwords=passwords,
                                         progress=False)
        ids = [x.sensor_id for x in sim.sensors]

        def stored() -> tuple[int, int]:
            with psycopg.connect(db_url) as conn:
                a = conn.execute("SELECT count(*) FROM observations WHERE sensor_id = ANY(%s)", (ids,)).fetchone()[0]
                b = conn.execute("SELECT count(*) FROM restricted.worker_observations WHERE sensor_id = ANY(%s)",
                                 (ids,)).fetchone()[0]
            return a, b

        from conftest import wait_for

        await asyncio.to_thread(wait_for, lambda: sum(stored()) >= expected, 180, 0.5, f"{expected} rows")
        await asyncio.sleep(2)
        public_rows, worker_rows = stored()
        assert result["total"] == len(sim.messages())
        assert parts["gateway"].stats["accepted"] == result["total"]
        assert parts["gateway"].stats["dead_letter"] == 0
    assert public_rows + worker_rows == expected
    # personal data only in the restricted table, never in the shared one
    assert worker_rows == expected_personal > 0
    with psycopg.connect(db_url) as conn:
        leaked = conn.execute("SELECT count(*) FROM observations WHERE sensor_id = ANY(%s)",
                              (sorted(personal),)).fetchone()[0]
    assert leaked == 0


@pytest.mark.parametrize(("end", "says"), [("2999-01-01T00:00Z", "in the future"), ("yesterday noon", "not an ISO 8601")])
def test_demo_refuses_an_end_it_cannot_simulate_before_touching_anything(end, says):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "shared.cli", "demo", "--end", end], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert says in proc.stderr and "1/5 stack" not in proc.stdout
