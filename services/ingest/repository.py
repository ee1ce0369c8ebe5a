"""All SQL of the ingest room: loading the registry, writing observations and dead letters."""

from __future__ import annotations

import json
from datetime import datetime

import psycopg

from schemas.registry import SensorSpec
from shared.kafka import storable_text
from shared.storage.registry import load_sensors

OBS_COLUMNS = ("time", "sensor_id", "quantity", "value", "unit", "qc", "domain", "district", "ingested_at")
WORKER_COLUMNS = ("time", "sensor_id", "worker_id", "quantity", "value", "unit", "qc", "lat", "lon", "ingested_at")


def load_registry(db_url: str) -> dict[str, SensorSpec]:
    with psycopg.connect(db_url) as conn:
        return load_sensors(conn)


# binary COPY: the row tuples' Python types, as PostgreSQL stores them (text COPY spent a third of the write formatting)
OBS_TYPES = ("timestamptz", "text", "text", "float8", "text", "int2", "text", "text", "timestamptz")
WORKER_TYPES = ("timestamptz", "text", "text", "text", "float8", "text", "int2", "float8", "float8", "timestamptz")


async def _copy_rows(cur: psycopg.AsyncCursor, table: str, columns: tuple[str, ...], types: tuple[str, ...],
                     rows: list[tuple]) -> None:
    async with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(types))
        for r in rows:
            await copy.write_row(r)


async def _insert_new(conn: psycopg.AsyncConnection, cur: psycopg.AsyncCursor, table: str, key: str,
                      columns: tuple[str, ...], types: tuple[str, ...], rows: list[tuple]) -> int:
    """Insert the rows of `rows` not stored yet (by the table's unique `key`); returns how many were new.

    Most batches are all new: they are copied straight into the table, under a savepoint. A batch with a
    row already stored (replayed after a crash or a rebalance) or twice in itself (a QoS 1 resend) fails that
    copy on `key`; it is then copied into a staging table and only the new rows are inserted from there."""
    try:
        async with conn.transaction():  # a savepoint: a conflict undoes this copy only
            await _copy_rows(cur, table, columns, types, rows)
    except psycopg.errors.UniqueViolation:
        # `key` is the table's only unique constraint; under TimescaleDB the error names the chunk's copy of it
        return await _insert_only_new(cur, table, key, columns, types, rows)
    return len(rows)


async def _insert_only_new(cur: psycopg.AsyncCursor, table: str, key: str, columns: tuple[str, ...],
                           types: tuple[str, ...], rows: list[tuple]) -> int:
    stage = table.rsplit(".", 1)[-1] + "_stage"
    await cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
    await _copy_rows(cur, stage, columns, types, rows)
    await cur.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {stage} "
        f"ON CONFLICT ON CONSTRAINT {key} DO NOTHING"
    )
    return cur.rowcount


async def write_observations(conn: psycopg.AsyncConnection, rows: list[tuple], worker_rows: list[tuple],
                             dead_letters: list[tuple]) -> tuple[int, int, int]:
    """Write one Kafka batch in one transaction: COPY the rows in, and where some are stored already, insert
    only what is new.

    Idempotent on (sensor, quantity, time): a batch replayed after a crash inserts nothing twice.
    Returns the rows actually inserted (observations, worker observations, dead letters)."""
    n_obs = n_worker = n_dl = 0
    async with conn.transaction():
        async with conn.cursor() as cur:
            if rows:
                n_obs = await _insert_new(conn, cur, "observations", "observations_key", OBS_COLUMNS, OBS_TYPES, rows)
            if worker_rows:
                n_worker = await _insert_new(conn, cur, "restricted.worker_observations", "worker_observations_key",
                                             WORKER_COLUMNS, WORKER_TYPES, worker_rows)
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

    def text(v, *, optional: bool = False):
        # a letter another producer wrote may hold anything: only text (or nothing, where allowed) is stored, and
        # what is not fails here, in the sink's per-record check, instead of failing the batch's insert
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise TypeError(f"dead letter field holds {v!r}, not text")
        return storable_text(v)

    received = datetime.fromisoformat(p["received_at"])  # a bad one fails here, in the sink's per-record check
    if received.tzinfo is None:
        raise ValueError(f"received_at {p['received_at']!r} has no UTC offset")
    return (
        text(envelope["event_id"]), received, text(p["stage"]), text(p["reason_code"]), text(p["reason"]),
        text(p["origin"]), text(p.get("gateway_id"), optional=True), text(p.get("sensor_id"), optional=True),
        base64.b64decode(p["original_b64"], validate=True),
    )


def jsonb(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)
