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

import psycopg
from aiokafka.errors import CommitFailedError

from schemas.topics import DEADLETTER, OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from services.ingest import repository
from services.ingest.settings import IngestSettings
from shared import kafka
from shared.observability import DEAD_LETTERS, LATENCY, MESSAGES, update_consumer_lag
from shared.service import Readiness

logger = logging.getLogger("cityops.sink")
SERVICE = "sink"
RESTRICTED = PERSONAL_OBSERVATIONS


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s)


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
                env = json.loads(rec.value)
                if rec.topic == DEADLETTER:
                    dls.append(repository.dead_letter_row(env))
                    continue
                p = env["payload"]
                ingested = _ts(env["ingested_at"]) if env.get("ingested_at") else datetime.now(UTC)
                t = _ts(p["observed_at"])
                if rec.topic == RESTRICTED:
                    vals = p["values"]
                    lat = vals.get("lat", {}).get("value")
                    lon = vals.get("lon", {}).get("value")
                    worker = worker_of.get(p["sensor_id"], p["sensor_id"])
                    for q, v in vals.items():
                        worker_rows.append((t, p["sensor_id"], worker, q, float(v["value"]), v["unit"], int(v["qc"]),
                                            lat, lon, ingested))
                else:
                    for q, v in p["values"].items():
                        rows.append((t, p["sensor_id"], q, float(v["value"]), v["unit"], int(v["qc"]), p["domain"],
                                     p.get("district"), ingested))
            except (ValueError, KeyError, TypeError) as exc:
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
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self.s.sink_batch_max)
                records = [r for recs in batch.values() for r in recs]
                if records:
                    t0 = time.perf_counter()
                    if any(r.topic == RESTRICTED and _sensor(r) not in worker_of for r in records):
                        worker_of = await asyncio.to_thread(self._worker_map)
                    rows, worker_rows, dls = self._rows(records, worker_of)
                    n_obs, n_worker, _ = await repository.write_observations(conn, rows, worker_rows, dls)
                    # only now: the rows are committed
                    try:
                        await consumer.commit()
                    except CommitFailedError:
                        # a rebalance took the partitions: the new owner replays them, and the insert is
                        # idempotent on (sensor, quantity, time), so nothing is stored twice
                        logger.warning("offset commit refused after a rebalance; the batch will be replayed")
                    self.rows_written += n_obs
                    self.worker_rows_written += n_worker
                    MESSAGES.labels(SERVICE, "sink", "records").inc(len(records))
                    MESSAGES.labels(SERVICE, "sink", "rows_inserted").inc(n_obs + n_worker)
                    LATENCY.labels(SERVICE, "db_batch").observe(time.perf_counter() - t0)
                if time.monotonic() - last_lag > 5:
                    await update_consumer_lag(consumer, SERVICE)
                    last_lag = time.monotonic()
        finally:
            await consumer.stop()
            await conn.close()

    def _worker_map(self) -> dict[str, str]:
        with psycopg.connect(self.s.db_url) as c:
            rows = c.execute("SELECT sensor_id, meta->>'worker_id' FROM sensors WHERE personal").fetchall()
        return {sid: wid or sid for sid, wid in rows}


def _sensor(rec) -> str:
    return (rec.key or b"").decode(errors="replace")
