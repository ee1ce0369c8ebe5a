"""All SQL of the ingest room: loading the registry, writing observations and dead letters."""

from __future__ import annotations

import json

import psycopg

from schemas.registry import SensorSpec
from shared.kafka import storable_text
from shared.storage.registry import load_sensors

OBS_COLUMNS = ("time", "sensor_id", "quantity", "value", "unit", "qc", "domain", "district", "ingested_at")
WORKER_COLUMNS = ("time", "sensor_id", "worker_id", "quantity", "value", "unit", "qc", "lat", "lon", "ingested_at")


def load_registry(db_url: str) -> dict[str, SensorSpec]:
    with psycopg.connect(db_url) as conn:
        return load_sensors(conn)


async def write_observations(conn: psycopg.AsyncConnection, rows: list[tuple], worker_rows: list[tuple],
                             dead_letters: list[tuple]) -> tuple[int, int, int]:
    """Write one Kafka batch in one transaction: COPY into a staging table, then insert what is new.

    Idempotent on (sensor, quantity, time): a batch replayed after a crash inserts nothing twice.
    Returns the rows actually inserted (observations, worker observations, dead letters)."""
    n_obs = n_worker = n_dl = 0
    async with conn.transaction():
        async with conn.cursor() as cur:
            if rows:
                await cur.execute("CREATE TEMP TABLE IF NOT EXISTS obs_stage (LIKE observations) ON COMMIT DELETE ROWS")
                async with cur.copy(f"COPY obs_stage ({', '.join(OBS_COLUMNS)}) FROM STDIN") as copy:
                    for r in rows:
                        await copy.write_row(r)
                await cur.execute(
                    f"INSERT INTO observations ({', '.join(OBS_COLUMNS)}) "
                    f"SELECT DISTINCT ON (sensor_id, quantity, time) {', '.join(OBS_COLUMNS)} FROM obs_stage "
                    "ON CONFLICT ON CONSTRAINT observations_key DO NOTHING"
                )
                n_obs = cur.rowcount
            if worker_rows:
                await cur.execute(
                    "CREATE TEMP TABLE IF NOT EXISTS worker_stage (LIKE restricted.worker_observations) "
                    "ON COMMIT DELETE ROWS"
                )
                async with cur.copy(f"COPY worker_stage ({', '.join(WORKER_COLUMNS)}) FROM STDIN") as copy:
                    for r in worker_rows:
                        await copy.write_row(r)
                await cur.execute(
                    f"INSERT INTO restricted.worker_observations ({', '.join(WORKER_COLUMNS)}) "
                    f"SELECT DISTINCT ON (sensor_id, quantity, time) {', '.join(WORKER_COLUMNS)} FROM worker_stage "
                    "ON CONFLICT ON CONSTRAINT worker_observations_key DO NOTHING"
                )
                n_worker = cur.rowcount
            for dl in dead_letters:
                await cur.execute(
                    "INSERT INTO dead_letters (event_id, received_at, stage, reason_code, reason, origin, gateway_id,"
                    " sensor_id, original) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING",
                    dl,
                )
                n_dl += cur.rowcount
    return n_obs, n_worker, n_dl


def dead_letter_row(envelope: dict) -> tuple:
    """The dead_letters row of a dead-letter event. Its text may quote a NUL the sender wrote, which a text column
    refuses (and with it the whole batch, again at every restart): escaped here too, for letters that producers
    wrote before `kafka.dead_letter` escaped it, or that others write."""
    import base64

    p = envelope["payload"]

    def text(v):
        return storable_text(v) if isinstance(v, str) else v

    return (
        text(envelope["event_id"]), p["received_at"], text(p["stage"]), text(p["reason_code"]), text(p["reason"]),
        text(p["origin"]), text(p.get("gateway_id")), text(p.get("sensor_id")), base64.b64decode(p["original_b64"]),
    )


def jsonb(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)
