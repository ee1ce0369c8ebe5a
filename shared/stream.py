"""The stream-processing loop every domain service shares.

    Kafka batch in -> handler (pure domain calls, idempotent DB writes) -> records out, acked by Kafka
    -> offsets committed.

Offsets are committed only after the outputs are acknowledged, so a crash replays the batch
(at-least-once); outputs carry deterministic event ids and DB writes use natural keys, so a
replay changes nothing. A record the handler cannot read is dead-lettered with the reason and
skipped; a failure of Kafka or the database stops the loop (the process restarts, nothing is
committed that was not done).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiokafka.errors import CommitFailedError
from pydantic import BaseModel

from schemas.topics import ALERTS, TASKS
from shared import kafka
from shared.observability import DEAD_LETTERS, LATENCY, MESSAGES, PENDING_WORK, update_consumer_lag
from shared.service import Readiness

logger = logging.getLogger("cityops.stream")
ALERT_NAMESPACE = uuid.UUID("3c5b9a7e-2f1d-4e8a-b6c4-1d2e3f4a5b6c")


@dataclass(frozen=True)
class Output:
    topic: str
    key: bytes
    value: bytes


class PoisonRecord(Exception):
    """Raised by a handler for one record it cannot process; the record is dead-lettered."""


async def open_alerts(pool, domain: str, kinds: tuple[str, ...] | None = None, *,
                      newest_per_key: bool = True) -> list[dict[str, Any]]:
    """The alerts of `domain` (of `kinds`) still open in the alerts table the notification service keeps, the newest
    per dedup key (or all, oldest first, with `newest_per_key=False`: several leaks can be open under one key): what a
    service restarting takes up, since its alert state lives in memory and its stream resumes after the committed
    offsets. Keys: dedup_key, alert_id, kind, level, raised_at, evidence. Empty without a pool."""
    if pool is None:
        return []
    one = "DISTINCT ON (dedup_key) " if newest_per_key else ""
    order = "dedup_key, raised_at DESC" if newest_per_key else "raised_at, alert_id"
    async with pool.connection() as conn:
        cur = await conn.execute(
            f"SELECT {one}dedup_key, alert_id, kind, level, raised_at, evidence FROM alerts "
            "WHERE domain = %s AND (%s::text[] IS NULL OR kind = ANY(%s)) AND resolved_at IS NULL "
            f"AND status <> 'cleared' ORDER BY {order}",
            (domain, list(kinds) if kinds else None, list(kinds) if kinds else None))
        cols = [d.name for d in cur.description or []]
        return [dict(zip(cols, r, strict=True)) for r in await cur.fetchall()]


def stable_id(*parts: Any) -> str:
    """A deterministic id: the same inputs give the same id on a replay."""
    return str(uuid.uuid5(ALERT_NAMESPACE, "|".join(str(p) for p in parts)))


def output(topic: str, key: str, payload: BaseModel, *, source: str, occurred_at: datetime,
           event_id: str | None = None) -> Output:
    return Output(topic, key.encode(), kafka.event_for_topic(topic, source, payload, occurred_at=occurred_at,
                                                              event_id=event_id))


def alert_output(alert, *, source: str) -> Output:
    """An Alert on the alerts topic, keyed by its dedup key. The event id is the alert id for its first version;
    a later version of the same alert (updated, cleared) gets its own, stable id - consumers that drop
    redelivered event ids (the notification service's inbox) must not take the orange version of a blue flood
    warning for a redelivery of the blue one."""
    event_id = alert.alert_id
    if alert.status != "raised":
        event_id = stable_id(alert.alert_id, alert.status, alert.raised_at.isoformat(), alert.severity,
                             alert.level or "", alert.title_en)
    return output(ALERTS, alert.dedup_key, alert, source=source, occurred_at=alert.raised_at, event_id=event_id)


def task_output(task, *, source: str) -> Output:
    return output(TASKS, task.task_id, task, source=source, occurred_at=task.created_at, event_id=task.task_id)


Handler = Callable[[list[dict]], Awaitable[list[Output]]]


class StreamProcessor:
    def __init__(self, name: str, bootstrap: str, topics: list[str], group: str, handler: Handler,
                 readiness: Readiness, *, max_records: int = 2000, poll_ms: int = 500,
                 tick: Callable[[], Awaitable[list[Output]]] | None = None, tick_s: float = 5.0,
                 pending: Callable[[], int] | None = None):
        self.name = name
        self.bootstrap = bootstrap
        self.topics = topics
        self.group = group
        self.handler = handler
        self.readiness = readiness
        self.max_records = max_records
        self.poll_ms = poll_ms
        self.tick = tick
        self.tick_s = tick_s
        # work the handler holds after its input was committed (a model still fitting, a window still open):
        # exported as cityops_pending_work so an operator (or the demo) sees the service is not idle yet
        self.pending = pending
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        consumer = kafka.consumer(self.bootstrap, self.group, *self.topics, max_poll_records=self.max_records)
        producer = kafka.producer(self.bootstrap)
        await consumer.start()
        await producer.start()
        self.readiness.set("kafka")
        last_tick = last_lag = time.monotonic()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=self.poll_ms, max_records=self.max_records)
                records = [r for recs in batch.values() for r in recs]
                outputs: list[Output] = []
                if records:
                    t0 = time.perf_counter()
                    events, sources = [], []
                    for r in records:
                        try:
                            if r.value is None:  # a tombstone (null value): json.loads raised TypeError
                                raise ValueError("a record with no value")
                            env = json.loads(r.value)
                            if not isinstance(env, dict) or "payload" not in env:
                                raise ValueError("not an envelope")
                            events.append(env)
                            sources.append(r)
                        except (ValueError, RecursionError) as exc:
                            outputs.append(self._dead(r, "malformed_json", f"unreadable record: {exc}"))
                    try:
                        outputs += await self.handler(events)
                    except PoisonRecord as exc:
                        logger.warning("poison batch", extra={"fields": {"service": self.name, "error": str(exc)}})
                        outputs += await self._one_by_one(events, sources)
                    LATENCY.labels(self.name, "handle_batch").observe(time.perf_counter() - t0)
                    MESSAGES.labels(self.name, "consume", "records").inc(len(records))
                if self.tick is not None and time.monotonic() - last_tick >= self.tick_s:
                    last_tick = time.monotonic()
                    outputs += await self.tick()
                if outputs:
                    futs = [await producer.send(o.topic, o.value, key=o.key) for o in outputs]
                    await asyncio.gather(*futs)
                    MESSAGES.labels(self.name, "produce", "records").inc(len(outputs))
                if records:
                    try:
                        await consumer.commit()
                    except CommitFailedError as exc:
                        # the group rebalanced while we worked: these records go to the new owner (or to us
                        # again); the outputs carry stable ids, so a second pass duplicates nothing downstream
                        logger.warning("commit refused after a rebalance; the batch will be delivered again",
                                       extra={"fields": {"service": self.name, "error": str(exc)}})
                        MESSAGES.labels(self.name, "commit", "refused").inc()
                        continue
                    self.processed += len(records)
                    now = time.time()
                    for r in records[-50:]:
                        LATENCY.labels(self.name, "kafka_to_output").observe(max(now - r.timestamp / 1000.0, 0.0))
                if self.pending is not None:
                    PENDING_WORK.labels(self.name).set(self.pending())
                if time.monotonic() - last_lag > 5:
                    await update_consumer_lag(consumer, self.name)
                    last_lag = time.monotonic()
        finally:
            await producer.stop()
            await consumer.stop()

    async def _one_by_one(self, events: list[dict], records) -> list[Output]:
        out: list[Output] = []
        for env, rec in zip(events, records, strict=True):
            try:
                out += await self.handler([env])
            except PoisonRecord as exc:
                out.append(self._dead(rec, "processing_error", str(exc)))
        return out

    def _dead(self, rec, code: str, reason: str) -> Output:
        original = rec.value or b""
        if kafka.is_restricted(rec.topic):  # a worker's data must not leave the restricted topic via the dead letters
            original = kafka.redacted_personal(original)
        key, value, _ = kafka.dead_letter(stage=self.name, reason_code=code, reason=reason,
                                          origin=f"kafka:{rec.topic}/{rec.partition}@{rec.offset}",
                                          original=original)
        DEAD_LETTERS.labels(self.name, code).inc()
        return Output(kafka.DEADLETTER_TOPIC, key, value)
