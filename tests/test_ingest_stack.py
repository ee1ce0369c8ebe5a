"""The ingest room against the real Mosquitto, Kafka and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from ingest_corpus import cases
from ingest_harness import (
    air_sensor,
    collect,
    gateway_client,
    kafka_tail,
    publish_all,
    register,
    running,
    settings_for,
)

from schemas.topics import DEADLETTER, OBSERVATION_TOPIC

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


def _count(db_url: str, sql: str, *args) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, args).fetchone()[0]


async def test_every_bad_input_ends_in_dead_letters_and_gateway_stays_alive(stack_env, db_url):
    tok = secrets.token_hex(3)
    A, B, GA, GB = f"aq-{tok}-a", f"aq-{tok}-b", f"gw-{tok}-a", f"gw-{tok}-b"
    W = f"wb-{tok}"  # a wearable: personal data
    wearable = air_sensor(W, GA).model_copy(update={"domain": "safety", "kind": "wearable", "personal": True})
    mq = register(db_url, [air_sensor(A, GA), air_sensor(B, GB), wearable])
    now = datetime.now(UTC)
    corpus = cases(A, B, GA, GB, (now - timedelta(minutes=3)).isoformat(), (now - timedelta(days=30)).isoformat(),
                   (now + timedelta(hours=3)).isoformat())
    s = settings_for(db_url, tok)
    port = int(stack_env["CITYOPS_MQTT_PORT"])
    dlq = await kafka_tail(s.kafka_bootstrap, DEADLETTER)
    try:
        async with running(s) as parts:
            ca, cb = gateway_client(mq, GA, port), gateway_client(mq, GB, port)
            good = json.dumps({"sensor_id": A, "time": (now - timedelta(minutes=1)).isoformat(),
                               "values": {"pm25": 33.0, "temp": 21.5}}).encode()
            await asyncio.to_thread(publish_all, ca, [(c[2], c[3]) for c in corpus if c[4] == GA])
            await asyncio.to_thread(publish_all, cb, [(c[2], c[3]) for c in corpus if c[4] == GB])
            # an exact duplicate of a good reading
            await asyncio.to_thread(publish_all, ca, [(f"city/{GA}/{A}", good), (f"city/{GA}/{A}", good)])
            # a wearable's reading the gateway rejects: the dead letter must not carry the worker's data
            personal = json.dumps({"sensor_id": W, "time": "yesterday", "values": {"pm25": 12.3456}}).encode()
            await asyncio.to_thread(publish_all, ca, [(f"city/{GA}/{W}", personal)])
            expected = len(corpus) + 2
            letters = await collect(dlq, lambda e: e["payload"].get("gateway_id") in (GA, GB), expected, timeout=90)
            ca.disconnect()
            cb.disconnect()

            got = {base64.b64decode(e["payload"]["original_b64"]): e["payload"]["reason_code"] for e in letters}
            assert len(letters) == expected, f"{len(letters)} dead letters for {expected} bad messages"
            for name, reason, _topic, payload, _gw in corpus:
                assert got.get(payload) == reason, f"{name}: expected {reason}, got {got.get(payload)}"
            assert got[good] == "duplicate"
            mine = [o for o in got if W.encode() in o or b"redacted personal" in o]
            assert len(mine) == 1 and mine[0].startswith(b"redacted personal payload, sha256 ")
            assert b"12.3456" not in mine[0] and W.encode() not in mine[0]
            assert all(e["payload"]["reason"] for e in letters)
            # the gateway is alive and still forwarding good data (its Kafka ack may trail the dead letters')
            from conftest import async_wait_for

            async def forwarded():
                return parts["gateway"].stats["accepted"] == 1

            await async_wait_for(forwarded, timeout=30, what="the good reading to be acknowledged by Kafka")
            # the sink stored the good reading (2 quantities) and every dead letter, and nothing else
            await asyncio.to_thread(_wait_rows, db_url, A, 2)
            assert _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id IN (%s, %s)", A, B) == 2
            n_dl = await asyncio.to_thread(_wait_dead_letters, db_url, (GA, GB), expected)
            assert n_dl == expected
    finally:
        await dlq.stop()


def _wait_rows(db_url: str, sensor: str, n: int) -> None:
    from conftest import wait_for

    wait_for(lambda: _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = %s", sensor) >= n,
             what=f"{n} rows of {sensor}")


def _wait_dead_letters(db_url: str, gateways: tuple[str, str], n: int) -> int:
    from conftest import wait_for

    sql = "SELECT count(*) FROM dead_letters WHERE gateway_id IN (%s, %s)"
    wait_for(lambda: _count(db_url, sql, *gateways) >= n, what=f"{n} dead letters in the database")
    return _count(db_url, sql, *gateways)


async def test_exact_counts_and_restart_loses_nothing(stack_env, db_url, monkeypatch):
    """Readings published while the gateway is down are delivered after it restarts; a replayed Kafka batch
    (sink restarted from the start of the topic) adds no rows."""
    tok = secrets.token_hex(3)
    sensors = [air_sensor(f"aq-{tok}-{i}", f"gw-{tok}") for i in range(5)]
    mq = register(db_url, sensors)
    port = int(stack_env["CITYOPS_MQTT_PORT"])
    s = settings_for(db_url, tok)
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    # the replay below re-reads the topic from this test's start, not the whole retention of a busy topic
    test_start_ms = int(datetime.now(UTC).timestamp() * 1000) - 5000

    def batch(offset_min: int, n: int):
        return [(f"city/gw-{tok}/{sp.sensor_id}",
                 json.dumps({"sensor_id": sp.sensor_id, "time": (t0 + timedelta(minutes=offset_min + k)).isoformat(),
                             "values": {"pm25": 20.0 + k % 7, "temp": 15.0 + (k % 5) * 0.1}}).encode())
                for k in range(n) for sp in sensors]

    client = gateway_client(mq, f"gw-{tok}", port)
    async with running(s, sink=False):
        await asyncio.to_thread(publish_all, client, batch(0, 40))  # 200 messages
    # gateway down: the broker queues these in the gateway's persistent session
    await asyncio.to_thread(publish_all, client, batch(40, 30))  # 150 messages
    async with running(s, sink=True):
        ids = [sp.sensor_id for sp in sensors]
        await asyncio.to_thread(_wait_total, db_url, ids, 350 * 2)
    client.disconnect()
    assert _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = ANY(%s)", ids) == 700
    # replay: a new sink group reads the topic from the beginning; the unique key keeps the count
    replay = settings_for(db_url, tok + "r")
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(test_start_ms))
    async with running(replay, gateway=False) as parts:
        from conftest import async_wait_for

        async def caught_up():
            from shared.observability import CONSUMER_LAG

            return parts["sink"].rows_written == 0 and _lag_zero(CONSUMER_LAG, OBSERVATION_TOPIC["air"])

        await asyncio.sleep(3)
        await async_wait_for(caught_up, timeout=120, what="replaying sink to catch up")
    assert _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = ANY(%s)", ids) == 700


def _lag_zero(gauge, topic: str) -> bool:
    samples = [s for m in gauge.collect() for s in m.samples if s.labels.get("topic") == topic
               and s.labels.get("service") == "sink"]
    return bool(samples) and all(s.value == 0 for s in samples)


def _wait_total(db_url: str, ids: list[str], n: int) -> None:
    from conftest import wait_for

    wait_for(lambda: _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = ANY(%s)", ids) >= n,
             timeout=120, what=f"{n} rows")


async def test_dead_letter_quoting_a_nul_is_stored_with_its_batch(db_url):
    """Before: a dead letter whose sensor_id or reason quoted a NUL the sender wrote ({"sensor_id":"abc\\u0000"}
    is valid JSON) made PostgreSQL refuse the dead_letters insert: the sink's whole batch rolled back, the sink
    died, restarted on the same batch and died again. Now the text is escaped ("\\x00") where the dead letter is
    made and again where the sink stores it (for letters already on the topic), and the batch commits."""
    from types import SimpleNamespace

    from services.ingest import repository
    from services.ingest.domain.validate import Accepted, Rejected, Validator
    from services.ingest.sink import ObservationSink
    from shared import kafka
    from shared.service import Readiness

    tok = secrets.token_hex(3)
    A, GA = f"aq-{tok}", f"gw-{tok}"
    now = datetime.now(UTC).replace(microsecond=0)
    v = Validator({A: air_sensor(A, GA)})
    good = v.validate(f"city/{GA}/{A}", json.dumps({"sensor_id": A, "time": now.isoformat(),
                                                    "values": {"pm25": 12.5}}).encode(), now)
    bad_payload = json.dumps({"sensor_id": A + "\u0000", "time": now.isoformat(), "values": {"pm\u0000": "x"}}).encode()
    bad = v.validate(f"city/{GA}/{A}", bad_payload, now)
    assert isinstance(good, Accepted) and isinstance(bad, Rejected)
    _, fresh, fresh_id = kafka.dead_letter(stage="ingest", reason_code=bad.reason_code, reason=bad.reason,
                                           origin=f"mqtt:city/{GA}/{A}", original=bad_payload, gateway_id=GA,
                                           sensor_id=bad.sensor_id, received_at=now)
    # as an earlier gateway, or another producer, left it on the topic: NUL (and a lone surrogate) in its text
    legacy_id = f"legacy-{tok}"
    legacy = json.dumps({"event_id": legacy_id, "type": "dead_letter", "schema_version": 1, "source": "ingest",
                         "occurred_at": now.isoformat(), "payload": {
                             "reason_code": "schema_violation", "reason": "values.pm\u0000: not a number \ud800",
                             "stage": "ingest", "origin": f"mqtt:city/{GA}/{A}", "gateway_id": GA,
                             "sensor_id": f"{A}\u0000", "original_b64": base64.b64encode(bad_payload).decode(),
                             "received_at": now.isoformat()}}).encode()
    records = [SimpleNamespace(topic=t, partition=0, offset=i, value=val, key=None) for i, (t, val) in enumerate(
        [(good.topic, good.value), (DEADLETTER, fresh), (DEADLETTER, legacy)])]

    sink = ObservationSink(settings_for(db_url, tok), Readiness("db", "kafka"))
    rows, worker_rows, dls = sink._rows(records, {})  # noqa: SLF001 - the sink's own path to the database
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        n_obs, _, n_dl = await repository.write_observations(conn, rows, worker_rows, dls)
    assert (n_obs, n_dl) == (1, 2)
    with psycopg.connect(db_url) as conn:
        stored = {r[0]: r[1:] for r in conn.execute(
            "SELECT event_id, sensor_id, reason, original FROM dead_letters WHERE event_id = ANY(%s)",
            ([fresh_id, legacy_id],)).fetchall()}
    assert stored[legacy_id][0] == f"{A}\\x00" and "pm\\x00" in stored[legacy_id][1]
    assert "\\ud800" in stored[legacy_id][1]
    assert stored[fresh_id][0] is None and "\\x00" in stored[fresh_id][1]  # no valid sensor id was given
    assert bytes(stored[fresh_id][2]) == bad_payload == bytes(stored[legacy_id][2])
    assert _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = %s", A) == 1


async def test_the_sink_stores_new_rows_once_whether_a_batch_is_fresh_replayed_or_repeats_itself(db_url):
    """The sink copies a batch straight into the table and, when some rows are stored already (a replay after a
    crash) or a reading comes twice in one batch (a QoS 1 resend), inserts only the new ones. A record the binary
    COPY could not take (a time without offset, a flag outside QARTOD's, a number where text belongs, a NUL) is a
    dead letter of its own, and none of its rows is stored, even those read before the bad one."""
    from types import SimpleNamespace

    from services.ingest import repository
    from services.ingest.sink import ObservationSink
    from shared import kafka
    from shared.service import Readiness

    tok = secrets.token_hex(3)
    A = f"aq-{tok}"
    t0 = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(minutes=int(tok, 16) % 100_000)
    topic = OBSERVATION_TOPIC["air"]

    def rec(i: int, minute: int, **over) -> SimpleNamespace:
        p = {"sensor_id": A, "observed_at": (t0 + timedelta(minutes=minute)).isoformat(), "domain": "air",
             "district": "d01", "values": {"pm25": {"value": 10.0 + minute, "unit": "ug/m3", "qc": 1},
                                           "pm10": {"value": 20.0 + minute, "unit": "ug/m3", "qc": 1}}}
        p.update(over)
        env = kafka.envelope("observation.air", "ingest", p, occurred_at=t0)
        return SimpleNamespace(topic=topic, partition=0, offset=i, value=kafka.encode(env), key=A.encode())

    sink = ObservationSink(settings_for(db_url, tok), Readiness("db", "kafka"))

    async def write(records):
        rows, worker_rows, dls = sink._rows(records, {})  # noqa: SLF001 - the sink's own path to the database
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            return await repository.write_observations(conn, rows, worker_rows, dls)

    def stored() -> int:
        return _count(db_url, "SELECT count(*) FROM observations WHERE sensor_id = %s", A)

    assert (await write([rec(i, i) for i in range(3)]))[0] == 6  # fresh: straight in
    assert (await write([rec(i, i) for i in range(3)]))[0] == 0  # replayed: nothing twice
    assert stored() == 6
    assert (await write([rec(i, i) for i in range(2, 5)]))[0] == 4  # half stored already: the new half
    assert (await write([rec(5, 5), rec(6, 5), rec(7, 6)]))[0] == 4  # a resend inside the batch
    assert stored() == 14
    bad = [rec(10, 20, observed_at=(t0 + timedelta(minutes=20)).replace(tzinfo=None).isoformat()),
           rec(11, 21, values={"pm25": {"value": 1.0, "unit": "ug/m3", "qc": 1},
                               "pm10": {"value": 2.0, "unit": "ug/m3", "qc": 300}}),
           rec(12, 22, district=7), rec(13, 23, district="d\u000001"), rec(14, 24)]
    n_obs, _, n_dl = await write(bad)
    assert (n_obs, n_dl) == (2, 4)  # only the good record's two rows
    assert stored() == 16
    with psycopg.connect(db_url) as conn:
        times = {r[0] for r in conn.execute("SELECT time FROM observations WHERE sensor_id = %s", (A,))}
    assert t0 + timedelta(minutes=21) not in times  # the record whose second value was bad stored neither


async def test_a_replay_into_a_chunked_table_falls_back_to_inserting_the_new_rows(db_url):
    """Under TimescaleDB a duplicate is reported against the chunk's copy of the unique constraint ('1_1_...'),
    not the table's, and the sink re-raised it: every replayed batch crash-looped the sink. A partitioned table
    reports the partition's index in the same way; the sink's write takes the fallback there too."""
    from services.ingest import repository

    tok = secrets.token_hex(3)
    table, key = f"obs_part_{tok}", f"obs_part_{tok}_key"
    t0 = datetime(2026, 1, 5, tzinfo=UTC)
    rows = [(t0 + timedelta(minutes=i), "s1", "pm25", float(i), "ug/m3", 1, "air", None, t0) for i in range(4)]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE {table} (time timestamptz NOT NULL, sensor_id text NOT NULL, quantity text NOT NULL, "
            "value double precision NOT NULL, unit text NOT NULL, qc smallint NOT NULL, domain text NOT NULL, "
            f"district text, ingested_at timestamptz NOT NULL, CONSTRAINT {key} UNIQUE (sensor_id, quantity, time)) "
            "PARTITION BY RANGE (time)")
        await conn.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        try:
            for batch, new in ((rows[:2], 2), (rows, 2), (rows, 0)):
                async with conn.transaction(), conn.cursor() as cur:
                    got = await repository._insert_new(  # noqa: SLF001 - the write path itself
                        conn, cur, table, key, repository.OBS_COLUMNS, repository.OBS_TYPES, batch)
                assert got == new
            assert (await (await conn.execute(f"SELECT count(*) FROM {table}")).fetchone())[0] == 4
        finally:
            await conn.execute(f"DROP TABLE {table}")


async def test_records_no_column_can_take_are_dead_letters_not_a_failed_batch(db_url):
    """An infinite flag or an integer too big for a float raised OverflowError out of the sink's reading; a dead
    letter from another producer with a time that is not one, or a number for its reason code, failed the whole
    batch's insert. Either way the sink died and read the same batch again at every restart."""
    from types import SimpleNamespace

    from services.ingest import repository
    from services.ingest.sink import ObservationSink
    from shared.service import Readiness

    tok = secrets.token_hex(3)
    A = f"aq-{tok}"
    now = datetime.now(UTC).replace(microsecond=0)

    def obs(qc: str, value: str) -> bytes:
        # written by hand: the numbers are JSON text no encoder here would write (Infinity, 10^400)
        head = json.dumps({"sensor_id": A, "observed_at": now.isoformat(), "domain": "air"})[:-1]
        return (f'{{"event_id":"e","type":"observation.air","payload":{head},'
                f'"values":{{"pm25":{{"value":{value},"unit":"ug/m3","qc":{qc}}}}}}}}}').encode()

    def letter(event_id: str, **over) -> bytes:
        p = {"reason_code": "schema_violation", "reason": "r", "stage": "ingest", "origin": "mqtt:x",
             "original_b64": base64.b64encode(b"x").decode(), "received_at": now.isoformat(), **over}
        return json.dumps({"event_id": event_id, "type": "dead_letter", "payload": p}).encode()

    values = [(OBSERVATION_TOPIC["air"], obs("Infinity", "1.0")), (OBSERVATION_TOPIC["air"], obs("1", "1" + "0" * 400)),
              (DEADLETTER, letter(f"bad-time-{tok}", received_at="garbage")),
              (DEADLETTER, letter(f"bad-code-{tok}", reason_code=7)),
              (OBSERVATION_TOPIC["air"], obs("1", "12.5"))]
    records = [SimpleNamespace(topic=t, partition=0, offset=i, value=v, key=A.encode())
               for i, (t, v) in enumerate(values)]
    sink = ObservationSink(settings_for(db_url, tok), Readiness("db", "kafka"))
    rows, worker_rows, dls = sink._rows(records, {})  # noqa: SLF001 - the sink's own path to the database
    assert len(rows) == 1 and len(dls) == 4
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        n_obs, _, n_dl = await repository.write_observations(conn, rows, worker_rows, dls)
    assert (n_obs, n_dl) == (1, 4)
