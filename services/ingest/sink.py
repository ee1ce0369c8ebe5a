"""The observation sink: Kafka → PostgreSQL/TimescaleDB in batches.

Offsets are committed only after the database transaction commits, and the insert is
idempotent on (sensor, quantity, time): a crash between the two replays a batch that then
inserts nothing twice. A record that cannot be read becomes a dead letter (with Kafka
coordinates as its origin) in the same transaction, so it is neither lost nor retried forever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

import orjson
import psycopg
from aiokafka.errors import CommitFailedError, IllegalStateError

from schemas.topics import DEADLETTER, OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from services.ingest import repository
from services.ingest.settings import IngestSettings
from shared import kafka
from shared.observability import DEAD_LETTERS, LATENCY, MESSAGES, update_consumer_lag
from shared.service import Readiness

logger = logging.getLogger("cityops.sink")
SERVICE = "sink"
RESTRICTED = PERSONAL_OBSERVATIONS


QC_FLAGS = frozenset({1, 2, 3, 4, 9})


def _loads(raw: bytes):
    """A record's JSON: orjson (reading is most of the sink's own work), and the standard library for what orjson
    is stricter about (a lone surrogate escape such as "\\ud800", NaN), so such a record reads as before."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def _ts(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:  # the gateway writes UTC offsets; a time without one is not ours to guess
        raise ValueError(f"time {s!r} has no UTC offset")
    return t


def _text(v) -> str:
    # rows go to PostgreSQL by binary COPY, which takes text fields as str only
    if not isinstance(v, str):
        raise TypeError(f"expected text, got {v!r}")
    if not v.isascii():
        v.encode()  # a lone surrogate raises here (UnicodeEncodeError), not in the COPY
    if "\x00" in v:
        raise ValueError("text holds a NUL character, which PostgreSQL cannot store")
    return v


def _number(v) -> float | None:
    return None if v is None else float(v)


def _qc(v) -> int:
    q = int(v)
    if q not in QC_FLAGS:
        raise ValueError(f"qc flag {v!r} is not a QARTOD flag (1, 2, 3, 4, 9)")
    return q


class ObservationSink:
    def __init__(self, settings: IngestSettings, readiness: Readiness):
        self.s = settings
        self.readiness = readiness
        self.rows_written = 0
        self.worker_rows_written = 0

    def _rows(self, records, worker_of: dict[str, str]):
        rows, worker_rows, dls = [], [], []
        for rec in records:
            origin = f"kafka:{rec.topic}/{rec.partition}@{rec.offset}"
            try:
                env = _loads(rec.value)
                if rec.topic == DEADLETTER:
                    dls.append(repository.dead_letter_row(env))
                    continue
                p = env["payload"]
                ingested = _ts(env["ingested_at"]) if env.get("ingested_at") else datetime.now(UTC)
                t = _ts(p["observed_at"])
                sid = _text(p["sensor_id"])
                # a record's rows are kept only once all of them are read: none stored if it is dead-lettered
                if rec.topic == RESTRICTED:
                    vals = p["values"]
                    lat = _number(vals.get("lat", {}).get("value"))
                    lon = _number(vals.get("lon", {}).get("value"))
                    worker = _text(worker_of.get(sid, sid))
                    worker_rows += [(t, sid, worker, _text(q), float(v["value"]), _text(v["unit"]), _qc(v["qc"]),
                                     lat, lon, ingested) for q, v in vals.items()]
                else:
                    domain, district = _text(p["domain"]), p.get("district")
                    district = None if district is None else _text(district)
                    rows += [(t, sid, _text(q), float(v["value"]), _text(v["unit"]), _qc(v["qc"]), domain, district,
                              ingested) for q, v in p["values"].items()]
            except (ValueError, KeyError, TypeError, AttributeError, OverflowError) as exc:
                raw = rec.value or b""
                if kafka.is_restricted(rec.topic):  # a worker's data stays in the restricted schema
                    raw = kafka.redacted_personal(raw)
                _, value, _ = kafka.dead_letter(
                    stage=SERVICE, reason_code="schema_violation", reason=f"unreadable record: {exc!r}"[:300],
                    origin=origin, original=raw,
                )
                dls.append(repository.dead_letter_row(json.loads(value)))
                DEAD_LETTERS.labels(SERVICE, "schema_violation").inc()
        return rows, worker_rows, dls

    async def run(self, stop: asyncio.Event) -> None:
        topics = [*OBSERVATION_TOPIC.values(), PERSONAL_OBSERVATIONS, DEADLETTER]
        consumer = kafka.consumer(self.s.kafka_bootstrap, self.s.sink_group, *topics,
                                  max_poll_records=self.s.sink_batch_max)
        await consumer.start()
        self.readiness.set("kafka")
        conn = await psycopg.AsyncConnection.connect(self.s.db_url)
        self.readiness.set("db")
        worker_of = await asyncio.to_thread(self._worker_map)
        last_lag = 0.0
        # Two batches in flight: while PostgreSQL stores one, the next is fetched and read (in a thread), so the
        # sink's Python and the database use both cores. Each batch commits its own offsets, after its rows.
        writing: asyncio.Task | None = None
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self.s.sink_batch_max)
                records = [r for recs in batch.values() for r in recs]
                if records:
                    t0 = time.perf_counter()
                    if any(r.topic == RESTRICTED and _sensor(r) not in worker_of for r in records):
                        worker_of = await asyncio.to_thread(self._worker_map)
                    rows, worker_rows, dls = await asyncio.to_thread(self._rows, records, worker_of)
                    offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items() if recs}
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(
                        self._store(consumer, conn, rows, worker_rows, dls, offsets, len(records), t0))
                elif writing is not None:
                    await writing
                    writing = None
                if time.monotonic() - last_lag > 5:
                    await update_consumer_lag(consumer, SERVICE)
                    last_lag = time.monotonic()
            if writing is not None:
                await writing
        finally:
            if writing is not None:
                writing.cancel()  # if still running, its transaction rolls back and its offsets stay uncommitted:
                await asyncio.gather(writing, return_exceptions=True)  # replayed, stored once
            await consumer.stop()
            await conn.close()

    async def _store(self, consumer, conn, rows, worker_rows, dls, offsets: dict, n_records: int, t0: float) -> None:
        n_obs, n_worker, _ = await repository.write_observations(conn, rows, worker_rows, dls)
        # only now: the rows are committed. Only this batch's offsets (the next batch is fetched already), and only
        # of partitions still ours: a rebalance hands the others to a new owner, which replays them, and the insert
        # is idempotent on (sensor, quantity, time), so nothing is stored twice
        ours = consumer.assignment()
        try:
            if mine := {tp: off for tp, off in offsets.items() if tp in ours}:
                await consumer.commit(mine)
        except (CommitFailedError, IllegalStateError):
            logger.warning("offset commit refused after a rebalance; the batch will be replayed")
        self.rows_written += n_obs
        self.worker_rows_written += n_worker
        MESSAGES.labels(SERVICE, "sink", "records").inc(n_records)
        MESSAGES.labels(SERVICE, "sink", "rows_inserted").inc(n_obs + n_worker)
        LATENCY.labels(SERVICE, "db_batch").observe(time.perf_counter() - t0)

    def _worker_map(self) -> dict[str, str]:
        with psycopg.connect(self.s.db_url) as c:
            rows = c.execute("SELECT sensor_id, meta->>'worker_id' FROM sensors WHERE personal").fetchall()
        return {sid: wid or sid for sid, wid in rows}


def _sensor(rec) -> str:
    return (rec.key or b"").decode(errors="replace")
