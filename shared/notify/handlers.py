"""The notification service's workers: Kafka in, delivery queue out, durable timers.

- `consume`: alerts and field tasks from Kafka. One transaction per batch records each event id
  (redelivery is a no-op), deduplicates alerts on `dedup_key`, assigns tasks and plans the
  deliveries; offsets are committed only after it.
- `dispatch`: sends planned deliveries through the channel plugins. Fresh deliveries go straight
  from the consumer (no polling delay); everything else (retries with backoff, quiet hours,
  digests of grouped or rate-limited notifications, a crashed sender's leased rows) is polled
  from `deliveries.next_attempt_at`.
- `timers`: escalations of unacknowledged alerts and overdue field tasks, polled from their due-time
  columns, so a restart continues them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from schemas.alerts import Alert
from schemas.deadletter import DeadLetterReason
from schemas.tasks import FieldTask, FieldTaskUpdate
from schemas.topics import DEADLETTER
from shared import kafka
from shared.notify import render, repository
from shared.notify.channels import Channel, Outgoing, PermanentError, TransientError, load_builtin
from shared.notify.domain import assign as assigning
from shared.notify.domain.config import (
    Person,
    Roster,
    Routing,
    Rule,
    expand,
    load_roster,
    load_routing,
    match_rule,
    quiet_until,
)
from shared.notify.settings import NotifySettings
from shared.observability import DEAD_LETTERS, LATENCY, MESSAGES, log
from shared.service import Readiness

logger = logging.getLogger("cityops.notify")
SERVICE = "notify"



_SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}
_LEVEL_RANK = {None: -1, "blue": 0, "yellow": 1, "orange": 2, "red": 3}
LEVEL_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}


def _rank(severity: str | None, level: str | None) -> tuple[int, int]:
    """How serious an alert is: severity first, then the warning colour (blue < yellow < orange < red)."""
    return _SEVERITY_RANK.get(severity or "", -1), _LEVEL_RANK.get(level, -1)

class NotifyError(Exception):
    """A domain error with its HTTP status and a message that says what to do."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def idempotency_key(
    purpose: str, subject_id: str, recipient: str, channel: str, tier: int, round_: int
) -> str:
    return hashlib.sha256(
        f"{purpose}|{subject_id}|{recipient}|{channel}|{tier}|{round_}".encode()
    ).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class Planner:
    """Turns (subject, recipients, channels) into delivery rows, applying quiet hours, grouping and
    rate limits. Counters are seeded from the database per batch and updated as rows are planned."""

    def __init__(self, svc: NotifyService, counts: dict, groups: dict, now: datetime):
        self.svc, self.counts, self.groups, self.now = svc, counts, groups, now
        self.rows: list[dict] = []

    def mark(self) -> tuple[int, dict, dict]:
        return len(self.rows), dict(self.counts), dict(self.groups)

    def undo(self, mark: tuple[int, dict, dict]) -> None:
        """Forget what was planned since `mark` (a record rolled back to its savepoint)."""
        n, self.counts, self.groups = mark
        del self.rows[n:]

    def add(
        self,
        *,
        purpose: str,
        kind: str,
        subject_id: str,
        severity: str,
        people: list[str],
        channels: Sequence[str],
        tier: int,
        round_: int,
        render_for,
        data: dict,
        source_event_id: str | None,
        group_key: str | None = None,
        shared_render_for=None,
        shared_data: dict | None = None,
    ) -> None:
        """`shared_render_for` and `shared_data`, if given, are what the city's common webhook receives instead (a
        person without a webhook of their own is reached through it)."""
        svc, now, routing = self.svc, self.now, self.svc.routing
        for pid in people:
            person = svc.people[pid]
            message = render_for(person.language)
            for ch in channels:
                key = idempotency_key(purpose, subject_id, pid, ch, tier, round_)
                shared = shared_render_for is not None and ch == "webhook" and not person.webhook_url
                row = {
                    "delivery_id": "d-" + key[:24],
                    "idempotency_key": key,
                    "subject_kind": kind,
                    "subject_id": subject_id,
                    "recipient": pid,
                    "channel": ch,
                    "language": person.language,
                    "tier": tier,
                    "round": round_,
                    "address": None,
                    "severity": severity,
                    "group_key": None,
                    "message": ({**shared_render_for(person.language), "data": shared_data} if shared
                                else {**message, "data": data}),
                    "source_event_id": source_event_id,
                    "hold_reason": None,
                    "created_at": now,
                    "status": "sending",
                    "error": None,
                    "next_attempt_at": now + timedelta(seconds=svc.s.notify_lease_s),
                }
                channel = svc.channels.get(ch)
                address = channel.address(person) if channel is not None else None
                if address is None:
                    row.update(status="dead", next_attempt_at=None, hold_reason="no_address")
                    field = {"email": "email", "sms": "phone", "webhook": "webhook_url"}.get(ch, "an address")
                    also = " (or CITYOPS_NOTIFY_WEBHOOK_URL, the city's receiver)" if ch == "webhook" else ""
                    row["error"] = (
                        f"{ch}: no address for {pid} in the roster; set {field} for {pid} in "
                        f"{svc.s.notify_roster}{also}, or remove {ch} from the rule"
                    )
                    self.rows.append(row)
                    continue
                row["address"] = address
                critical = severity == "critical"
                q = svc.held_until(severity, now)
                gk = (pid, ch, group_key)
                if q is not None:
                    row.update(
                        status="pending", next_attempt_at=q, hold_reason="quiet_hours", group_key=group_key
                    )
                elif group_key and tier == 0 and round_ == 0 and gk in self.groups and not critical:
                    row.update(
                        status="pending",
                        group_key=group_key,
                        hold_reason="grouped",
                        next_attempt_at=self.groups[gk] + timedelta(seconds=routing.group_window_s),
                    )
                elif not critical and self.counts.get((pid, ch), 0) >= routing.rate_limit_per_minute:
                    row.update(
                        status="pending",
                        hold_reason="rate_limit",
                        group_key=group_key,
                        next_attempt_at=now + timedelta(seconds=60),
                    )
                else:
                    row["group_key"] = group_key
                    self.counts[(pid, ch)] = self.counts.get((pid, ch), 0) + 1
                    if group_key and routing.group_window_s > 0:
                        self.groups.setdefault(gk, now)
                self.rows.append(row)


_Event = TypeVar("_Event", Alert, FieldTask)


class _Unstorable(ValueError):
    """A record that reads as JSON and may pass the schema but holds what PostgreSQL cannot store."""

    def __init__(self, code: DeadLetterReason, reason: str):
        super().__init__(reason)
        self.code = code


def _unstorable(value: Any, where: str) -> tuple[DeadLetterReason, str] | None:
    """The first value PostgreSQL would refuse, with where it is: NaN or Infinity (Python's json reads them, and
    1e400 as infinity; jsonb and numeric columns do not), a NUL character or a lone surrogate in text."""
    if isinstance(value, float) and not math.isfinite(value):
        return "non_finite_value", f"{where} is {value}, which JSON does not allow; send null or leave it out"
    if isinstance(value, str):
        if "\x00" in value:
            return "schema_violation", f"{where} holds a NUL character (\\u0000), which text cannot hold; remove it"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "bad_encoding", f"{where} holds a lone UTF-16 surrogate (\\ud800-\\udfff); send valid Unicode"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if (found := _unstorable(k, f"a key of {where}")) is not None:
                return found
            if (found := _unstorable(v, f"{where}.{k}")) is not None:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (found := _unstorable(v, f"{where}[{i}]")) is not None:
                return found
    return None


def _refused(exc: BaseException) -> bool:
    """A refusal one record's data can cause: a value PostgreSQL (or psycopg before it, e.g. a NUL in text)
    cannot store, a constraint, a limit such as an over-long index key (class 54). Anything else (the database
    away, a bug) stops the consumer, and the batch is read again after the restart."""
    if isinstance(exc, psycopg.DataError | psycopg.IntegrityError):
        return True
    if isinstance(exc, psycopg.Error):
        return (exc.sqlstate or "")[:2] == "54"
    return isinstance(exc, UnicodeError)


def _first_copies(items: list[tuple[str, _Event]], claimed: set[str]) -> list[tuple[str, _Event]]:
    """The events claimed just now, each once: a redelivered copy may sit in the same fetched batch as the
    original (both pass the claim, which returns the id once), and must not count as a second report."""
    seen: set[str] = set()
    out = []
    for event_id, item in items:
        if event_id in claimed and event_id not in seen:
            seen.add(event_id)
            out.append((event_id, item))
    return out


class NotifyService:
    def __init__(
        self,
        settings: NotifySettings,
        readiness: Readiness | None = None,
        *,
        roster: Roster | None = None,
        routing: Routing | None = None,
    ):
        self.s = settings
        self.readiness = readiness or Readiness("db", "kafka", "channels")
        self.roster = roster or load_roster(settings.notify_roster, allow_demo=settings.allow_demo_accounts)
        self.routing = routing or load_routing(settings.notify_routing, self.roster)
        self.people: dict[str, Person] = self.roster.by_id
        self.rules: dict[str, Rule] = {r.name: r for r in self.routing.rules}
        self.session_secret = settings.notify_session_secret or secrets.token_urlsafe(32)
        registry = load_builtin()
        used = {c for r in self.routing.rules for t in r.tiers for c in t.channels}
        used |= set(self.routing.tasks.channels) | set(self.routing.tasks.deadline_channels)
        self.channels: dict[str, Channel] = {name: registry[name](settings) for name in sorted(used)}
        self.pool: AsyncConnectionPool | None = None
        self.producer: Any = None  # AIOKafkaProducer once started
        self.queue: asyncio.Queue[list[dict]] = asyncio.Queue()
        self.results: list[tuple] = []
        self.sem = asyncio.Semaphore(settings.notify_send_concurrency)
        self.inflight: set[asyncio.Task] = set()
        self.started = False
        self.sent = 0

    @property
    def db(self) -> AsyncConnectionPool:
        if self.pool is None:
            raise RuntimeError("the notify service is not started (call start() or run())")
        return self.pool

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.started:
            return
        self.pool = AsyncConnectionPool(self.s.db_url, min_size=2, max_size=8, open=False)
        await self.pool.open(wait=True, timeout=60)
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT to_regclass('notify_escalations') IS NOT NULL")
            row = await cur.fetchone()
            if not (row and row[0]):
                raise RuntimeError(
                    "the database has no notification tables (migration 0004_notify): "
                    "run `cityops db migrate` first"
                )
        self.readiness.set("db")
        self.producer = kafka.producer(self.s.kafka_bootstrap)
        await self.producer.start()
        for ch in self.channels.values():
            await ch.start()
        self.readiness.set("channels")
        self.started = True

    async def close(self) -> None:
        if self.inflight:
            await asyncio.gather(*self.inflight, return_exceptions=True)
        if self.pool is not None:
            await self._flush_results()
        for ch in self.channels.values():
            await ch.close()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        self.started = False

    async def run(self, stop: asyncio.Event) -> None:
        """All workers until `stop` is set; if one fails, the others stop and the error propagates."""
        await self.start()
        try:
            workers = [
                asyncio.create_task(w(stop), name=w.__name__)
                for w in (self.consume, self.dispatch_fresh, self.dispatch_due, self.timers, self.flush)
            ]
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in done:
                if (exc := t.exception()) is not None:
                    raise exc
        finally:
            await self.close()

    # Kafka in ---------------------------------------------------------------------------------
    async def consume(self, stop: asyncio.Event) -> None:
        topics = (self.s.notify_alerts_topic, self.s.notify_tasks_topic)
        consumer = kafka.consumer(self.s.kafka_bootstrap, self.s.notify_group, *topics, max_poll_records=1000)
        try:
            await consumer.start()
        except Exception as exc:
            await consumer.stop()
            from aiokafka.errors import UnknownTopicOrPartitionError

            if isinstance(exc, UnknownTopicOrPartitionError):
                raise RuntimeError(
                    f"Kafka topic {' or '.join(topics)} does not exist: run `cityops stack up` "
                    "(it creates the platform topics) or check CITYOPS_NOTIFY_*_TOPIC"
                ) from exc
            raise
        self.readiness.set("kafka")
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                records = [r for recs in batch.values() for r in recs]
                if not records:
                    continue
                t0 = time.perf_counter()
                fresh, updates = await self.handle_records(records)
                await consumer.commit()  # only now: the batch's effects are committed
                if fresh:
                    self.queue.put_nowait(fresh)
                if updates:
                    await self.publish_outbox()
                LATENCY.labels(SERVICE, "consume_batch").observe(time.perf_counter() - t0)
        finally:
            await consumer.stop()

    async def handle_records(self, records) -> tuple[list[dict], list[FieldTaskUpdate]]:
        """Parse, dead-letter the unreadable, and apply the rest in one transaction. A record PostgreSQL refuses
        all the same is dead-lettered on its own: the batch is applied again record by record (see _apply_singly)."""
        parsed: list[tuple[Any, str, Alert | FieldTask]] = []
        dead: list[dict] = []
        for rec in records:
            origin = f"kafka:{rec.topic}/{rec.partition}@{rec.offset}"
            try:
                env = json.loads(rec.value)
                if (problem := _unstorable(env, "record")) is not None:
                    raise _Unstorable(*problem)
                event_id = env["event_id"]
                if not isinstance(event_id, str) or not event_id:
                    raise ValueError("event_id must be a non-empty string")
                if rec.topic == self.s.notify_alerts_topic:
                    parsed.append((rec, event_id, Alert.model_validate(env["payload"])))
                else:
                    parsed.append((rec, event_id, FieldTask.model_validate(env["payload"])))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:
                code: DeadLetterReason = (
                    "schema_violation" if isinstance(exc, ValidationError | KeyError) else "malformed_json"
                )
                reason = (
                    f"{rec.topic} record is not a valid envelope with an {'Alert' if 'alert' in rec.topic else 'FieldTask'}"
                    f" payload: {exc}; fix the producer, the record is kept here"
                )
                if isinstance(exc, _Unstorable):
                    code = exc.code
                    reason = f"{rec.topic} record cannot be stored: {exc}; fix the producer, the record is kept here"
                elif isinstance(exc, RecursionError):
                    reason = f"{rec.topic} record is nested too deeply to read; fix the producer, the record is kept here"
                _, value, _ = kafka.dead_letter(
                    stage=SERVICE, reason_code=code, reason=reason, origin=origin, original=rec.value or b""
                )
                await self.producer.send_and_wait(DEADLETTER, value, key=origin.encode())
                dead.append(json.loads(value))
                DEAD_LETTERS.labels(SERVICE, code).inc()
        now = _now()
        async with self.db.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor() as cur:
                    for env in dead:
                        await repository.insert_dead_letter(cur, env)
                    planner = await self._planner(cur, now)
                    inserted, updates, applied, letters = await self._apply_events(cur, parsed, planner, now)
                refused: list[tuple[str, bytes]] = []
            except Exception as exc:
                if not _refused(exc):
                    raise
                log(logger, logging.WARNING, "PostgreSQL refused a record of the batch; applying it record by record",
                    error=f"{type(exc).__name__}: {exc}", records=len(parsed))
                planner, inserted, updates, applied, letters, refused = await self._apply_singly(
                    conn, dead, parsed, now
                )
        await self._send_letters(refused + letters)
        MESSAGES.labels(SERVICE, "consume", "alerts").inc(applied["alerts"])
        MESSAGES.labels(SERVICE, "consume", "tasks").inc(applied["tasks"])
        MESSAGES.labels(SERVICE, "consume", "duplicates").inc(
            len(parsed) - len(refused) - applied["alerts"] - applied["tasks"]
        )
        # only rows this batch inserted: one the idempotency key dropped was planned, and sent, before
        return [r for r in planner.rows if r["status"] == "sending" and r["idempotency_key"] in inserted], updates

    async def _planner(self, cur, now: datetime) -> Planner:
        recipients = list(self.people)
        counts = await repository.recent_sends(cur, recipients, 60)
        groups = await repository.recent_groups(cur, recipients, self.routing.group_window_s)
        return Planner(self, counts, groups, now)

    async def _apply_events(
        self, cur, parsed: list[tuple[Any, str, Alert | FieldTask]], planner: Planner, now: datetime
    ) -> tuple[set[str], list[FieldTaskUpdate], dict[str, int], list[tuple[str, bytes]]]:
        """Claim the events, apply them and plan their deliveries. Returns the idempotency keys inserted, the task
        updates, how many alerts and tasks were new, and the dead letters (key, value) still to go to Kafka."""
        alerts = [(e, o) for r, e, o in parsed if isinstance(o, Alert)]
        tasks = [(e, o) for r, e, o in parsed if isinstance(o, FieldTask)]
        start = len(planner.rows)
        new_alert_events = await repository.claim_events(cur, self.s.notify_alerts_topic, [e for e, _ in alerts])
        new_task_events = await repository.claim_events(cur, self.s.notify_tasks_topic, [e for e, _ in tasks])
        alerts = _first_copies(alerts, new_alert_events)
        tasks = _first_copies(tasks, new_task_events)
        await self._apply_alerts(cur, alerts, planner, now)
        updates: list[FieldTaskUpdate] = []
        for event_id, task in tasks:
            updates += await self._apply_task(cur, event_id, task, planner)
        rows = planner.rows[start:]
        inserted = await repository.insert_deliveries(cur, rows)
        await repository.add_to_outbox(cur, self._outbox_rows(updates))
        letters = await self._no_address_letters(cur, rows, inserted)
        return inserted, updates, {"alerts": len(alerts), "tasks": len(tasks)}, letters

    async def _apply_singly(self, conn, dead: list[dict], parsed: list[tuple[Any, str, Alert | FieldTask]],
                            now: datetime):
        """The batch again, each record in a savepoint of one transaction: a record PostgreSQL refuses (a value
        that passed the schema but is no storable text or number, a constraint) is rolled back alone and
        dead-lettered; the others are applied in their order, and the offsets are committed after all of them.
        Without this, the one record failed the batch, the service stopped, and after each restart it failed on
        the same uncommitted batch again."""
        inserted: set[str] = set()
        updates: list[FieldTaskUpdate] = []
        applied = {"alerts": 0, "tasks": 0}
        letters: list[tuple[str, bytes]] = []
        refused: list[tuple[str, bytes]] = []
        async with conn.transaction(), conn.cursor() as cur:
            for env in dead:
                await repository.insert_dead_letter(cur, env)
            planner = await self._planner(cur, now)
            for rec, event_id, item in parsed:
                mark = planner.mark()
                try:
                    async with conn.transaction():
                        ins, ups, n, lets = await self._apply_events(cur, [(rec, event_id, item)], planner, now)
                except Exception as exc:
                    if not _refused(exc):
                        raise
                    planner.undo(mark)
                    origin = f"kafka:{rec.topic}/{rec.partition}@{rec.offset}"
                    what = "alert" if isinstance(item, Alert) else "field task"
                    error = f"{type(exc).__name__}: {exc}".replace("\x00", "")
                    _, value, _ = kafka.dead_letter(
                        stage=SERVICE, reason_code="processing_error", origin=origin, original=rec.value or b"",
                        reason=f"{rec.topic} record {event_id}: PostgreSQL refused to store this {what} ({error}); "
                        "fix the producer, the record is kept here",
                    )
                    await repository.insert_dead_letter(cur, json.loads(value))
                    refused.append((origin, value))
                    DEAD_LETTERS.labels(SERVICE, "refused_by_database").inc()
                    log(logger, logging.WARNING, "record refused by PostgreSQL, dead-lettered", origin=origin,
                        event_id=event_id, error=error)
                    continue
                inserted |= ins
                updates += ups
                applied["alerts"] += n["alerts"]
                applied["tasks"] += n["tasks"]
                letters += lets
        return planner, inserted, updates, applied, letters, refused

    async def _apply_alerts(
        self, cur, alerts: list[tuple[str, Alert]], planner: Planner, now: datetime
    ) -> None:
        if not alerts:
            return
        # a batch applies in order per dedup key: a clear before a new raise ends the old alert first; a clear
        # that is the key's last word ends what the batch raised too (applied after the inserts below; before
        # them, a raise and its clear in one catch-up batch left the alert open, paging until acknowledged)
        last = {a.dedup_key: i for i, (_, a) in enumerate(alerts)}
        cleared_first = [a.dedup_key for i, (_, a) in enumerate(alerts) if a.status == "cleared" and last[a.dedup_key] != i]
        cleared_last = [a.dedup_key for i, (_, a) in enumerate(alerts) if a.status == "cleared" and last[a.dedup_key] == i]
        if cleared_first:
            await repository.clear_alerts(cur, cleared_first, "source")
        live = [(e, a) for e, a in alerts if a.status != "cleared"]
        existing = await repository.open_alerts_by_dedup(cur, list({a.dedup_key for _, a in live}))
        window = timedelta(seconds=self.routing.dedup_window_s)
        new_rows: list[dict] = []
        repeats: dict[str, list] = {}
        refreshed: dict[str, Alert] = {}  # open alert -> the newest "updated" version of it
        escalations = []
        upgraded: dict[str, tuple[str, Alert]] = {}  # open alert -> (event id, the more severe version of it)

        def count_repeat(prev: dict, a: Alert) -> None:
            prev["seen"] = max(prev["seen"], a.raised_at)
            r = repeats.setdefault(prev["alert_id"], [0, a.raised_at])
            r[0] += 1
            r[1] = max(r[1], a.raised_at)

        for event_id, a in live:
            prev = existing.get(a.dedup_key)
            if prev is not None and a.status == "updated":
                # the source's newer version of the open alert, however late it comes: folded into it (a leak's
                # candidate pipes, a traced source reach the stored alert and the console, and notify nobody
                # again). More severe (a flood warning going from blue to orange) is news: stored, notified,
                # escalated anew
                count_repeat(prev, a)
                if _rank(a.severity, a.level) > _rank(prev.get("severity"), prev.get("level")):
                    upgraded[prev["alert_id"]] = (event_id, a)
                    prev["severity"], prev["level"] = a.severity, a.level
                    refreshed.pop(prev["alert_id"], None)
                elif prev["alert_id"] not in upgraded and (
                    prev["alert_id"] not in refreshed or a.raised_at >= refreshed[prev["alert_id"]].raised_at
                ):
                    refreshed[prev["alert_id"]] = a
                continue
            if prev is not None and a.raised_at - prev["seen"] <= window:
                count_repeat(prev, a)  # the same alert again within the dedup window
                continue
            rule = match_rule(
                self.routing,
                domain=a.domain,
                kind=a.kind,
                severity=a.severity,
                district=a.district,
                at=a.raised_at,
            )
            row = {
                "alert_id": a.alert_id,
                "domain": a.domain,
                "kind": a.kind,
                "severity": a.severity,
                "level": a.level,
                "status": "open",
                "title_zh": a.title_zh,
                "title_en": a.title_en,
                "message_zh": a.message_zh,
                "message_en": a.message_en,
                "lat": a.location.lat if a.location else None,
                "lon": a.location.lon if a.location else None,
                "district": a.district,
                "dedup_key": a.dedup_key,
                "raised_at": a.raised_at,
                "evidence": a.evidence,
                "repeat_count": 0,
                "last_seen_at": a.raised_at,
                "rule": rule.name if rule else None,
                "updated_at": now,
            }
            new_rows.append(row)
            existing[a.dedup_key] = {"alert_id": a.alert_id, "seen": a.raised_at, "severity": a.severity,
                                     "level": a.level}
            if rule is None:
                log(
                    logger,
                    logging.WARNING,
                    "no routing rule matches alert; stored, nobody notified",
                    alert_id=a.alert_id,
                    domain=a.domain,
                    severity=a.severity,
                )
                continue
            self._plan_alert(planner, row, rule, 0, 0, event_id)
            due = self._next_due(rule, 0, self.held_until(a.severity, now) or now)
            escalations.append((a.alert_id, rule.name, due))
        await repository.insert_alerts(cur, new_rows)
        if upgraded:
            await self._apply_upgrades(cur, upgraded, planner, now)
        await repository.count_repeats(cur, [(aid, n, seen) for aid, (n, seen) in repeats.items()])
        # alerts this batch inserted too: a leak alarm and its refined candidate pipes in one catch-up batch
        await repository.refresh_alerts(cur, list(refreshed.items()))
        await repository.start_escalations(cur, escalations)
        if cleared_last:
            await repository.clear_alerts(cur, cleared_last, "source")

    async def _apply_upgrades(self, cur, upgraded: dict[str, tuple[str, Alert]], planner: Planner, now: datetime) -> None:
        """Open alerts whose source made them more severe: the stored alert takes the new severity, level and
        words, the routing rule of the new severity is notified (saying what it was before), and its escalation
        starts over."""
        before = await repository.alerts_by_id(cur, list(upgraded))
        await repository.upgrade_alerts(cur, [(aid, a) for aid, (_, a) in upgraded.items()])
        restarts = []
        for aid, (event_id, a) in upgraded.items():
            old = before.get(aid)
            if old is None:
                continue
            was_zh = render.SEVERITY_ZH[old["severity"]] + (LEVEL_ZH.get(old["level"], "") if old["level"] else "")
            row = {**old, "severity": a.severity, "level": a.level, "title_zh": a.title_zh, "title_en": a.title_en,
                   "message_zh": a.message_zh, "message_en": a.message_en, "evidence": a.evidence,
                   "upgraded_from": old["severity"] + (f", {old['level']}" if old["level"] else ""),
                   "upgraded_from_zh": was_zh}
            rule = match_rule(self.routing, domain=a.domain, kind=a.kind, severity=a.severity,
                              district=a.district, at=a.raised_at)
            log(logger, logging.INFO, "alert upgraded", alert_id=aid, severity=a.severity, warning_level=a.level,
                was=row["upgraded_from"], rule=rule.name if rule else None)
            if rule is None:
                continue
            # its own purpose: the first version's notifications (same tier and round) must not swallow these
            self._plan_alert(planner, row, rule, 0, 0, event_id, purpose=f"alert-upgrade-{a.severity}-{a.level or '-'}")
            restarts.append((aid, rule.name, self._next_due(rule, 0, self.held_until(a.severity, now) or now)))
        await repository.restart_escalations(cur, restarts)

    def _next_due(self, rule: Rule, tier: int, since: datetime) -> datetime | None:
        """When the tier notified at `since` has had its time to acknowledge (None: the escalation ends)."""
        if tier + 1 >= len(rule.tiers) and not rule.repeat_until_ack:
            return None
        return since + timedelta(seconds=rule.tiers[tier].ack_timeout_s * self.s.notify_escalation_scale)

    def held_until(self, severity: str, at: datetime) -> datetime | None:
        """When quiet hours release notifications of this severity, or None if they go now (critical always does).
        The escalation clock starts there too: nobody can acknowledge what they have not been told."""
        return None if severity == "critical" else quiet_until(self.routing, severity, at)

    def _plan_alert(
        self, planner: Planner, row: dict, rule: Rule, tier: int, round_: int, source_event_id: str | None,
        purpose: str = "alert",
    ) -> None:
        t = rule.tiers[tier]
        people = expand(t.recipients, self.roster, planner.now, self.routing.tz)
        tz = self.routing.tz
        data = {
            "alert_id": row["alert_id"],
            "domain": row["domain"],
            "kind": row["kind"],
            "severity": row["severity"],
            "district": row["district"],
            "lat": row["lat"],
            "lon": row["lon"],
            "dedup_key": row["dedup_key"],
            "rule": rule.name,
            "tier": tier,
            "round": round_,
        }
        planner.add(
            purpose=purpose,
            kind="alert",
            subject_id=row["alert_id"],
            severity=row["severity"],
            people=people,
            channels=list(t.channels),
            tier=tier,
            round_=round_,
            render_for=lambda lang: render.alert_message(row, lang, tier=tier, round=round_, tz=tz),
            data=data,
            source_event_id=source_event_id,
            group_key=f"{row['domain']}:{row['kind']}:{row['district'] or '-'}",
        )

    # field tasks ------------------------------------------------------------------------------
    async def _apply_task(
        self, cur, event_id: str, task: FieldTask, planner: Planner
    ) -> list[FieldTaskUpdate]:
        row = {
            "task_id": task.task_id,
            "kind": task.kind,
            "domain": task.domain,
            "priority": task.priority,
            "status": "open",
            "title_zh": task.title_zh,
            "title_en": task.title_en,
            "description_zh": task.description_zh,
            "description_en": task.description_en,
            "lat": task.location.lat,
            "lon": task.location.lon,
            "district": task.district,
            "required_skills": task.required_skills,
            "due_at": task.due_at,
            "related_alert_id": task.related_alert_id,
            "created_at": task.created_at,
            "evidence": task.evidence,
        }
        if not await repository.insert_task(cur, row):
            return []
        await cur.execute(
            "INSERT INTO field_task_events (task_id, status, actor, note) VALUES (%s, 'open', %s, %s)",
            (task.task_id, "notify", f"received as event {event_id}"),
        )
        return await self.assign(cur, row, planner, actor="notify", exclude=set())

    async def assign(
        self,
        cur,
        task: dict,
        planner: Planner,
        *,
        actor: str,
        exclude: set[str],
        person_id: str | None = None,
    ) -> list[FieldTaskUpdate]:
        """Assign to `person_id`, or to the best candidate; with nobody suitable, leave it open and say so."""
        if person_id is None:
            loads = await repository.workloads(cur)
            state = await repository.staff_state(cur)
            cands = []
            for p in self.roster.people:
                if "field_staff" not in p.roles:
                    continue
                lat, lon, avail = state.get(p.id, (None, None, None))
                cands.append(
                    assigning.Candidate(
                        person_id=p.id,
                        skills=frozenset(p.skills),
                        lat=lat if lat is not None else p.lat,
                        lon=lon if lon is not None else p.lon,
                        available=p.available if avail is None else avail,
                        active_tasks=loads.get(p.id, 0),
                        max_tasks=p.max_tasks,
                    )
                )
            ranked = assigning.rank(
                cands,
                lat=task["lat"],
                lon=task["lon"],
                required_skills=list(task["required_skills"]),
                exclude=exclude,
            )
            person_id = ranked[0][0] if ranked else None
        tz = self.routing.tz
        # the n-th assignment (or the n-th time it is left open) is news to its recipient even if they heard of an
        # earlier one: a round of its own, or the idempotency key took it for that earlier push and dropped it
        # (assigned to A, to B, back to A: A was told nothing)
        if person_id is not None:
            round_ = await repository.times_in_state(cur, task["task_id"], "assigned")
        else:  # less the task's arrival, an "open" event too
            round_ = max(0, await repository.times_in_state(cur, task["task_id"], "open") - 1)
        if person_id is None:
            await repository.set_task_state(
                cur,
                task["task_id"],
                status="open",
                assignee=None,
                actor=actor,
                note="nobody available with the skills "
                f"{list(task['required_skills'])}: dispatcher must assign",
            )
            people = expand(self.routing.tasks.unassigned_to, self.roster, planner.now, tz)
            view = dict(task, assignee=None)
            planner.add(
                purpose="task-unassigned",
                kind="task",
                subject_id=task["task_id"],
                severity=_task_severity(task),
                people=people,
                channels=self.routing.tasks.deadline_channels,
                tier=0,
                round_=round_,
                source_event_id=None,
                **_task_push(view, tz),
            )
            return [
                FieldTaskUpdate(task_id=task["task_id"], status="open", note="unassigned", at=planner.now)
            ]
        await repository.set_task_state(
            cur, task["task_id"], status="assigned", assignee=person_id, actor=actor
        )
        view = dict(task, assignee=person_id)
        planner.add(
            purpose="task-assign",
            kind="task",
            subject_id=task["task_id"],
            severity=_task_severity(task),
            people=[person_id],
            channels=self.routing.tasks.channels,
            tier=0,
            round_=round_,
            source_event_id=None,
            **_task_push(view, tz),
        )
        return [
            FieldTaskUpdate(task_id=task["task_id"], status="assigned", assignee=person_id, at=planner.now)
        ]

    async def transition(
        self,
        task_id: str,
        new: str,
        *,
        actor: str,
        role: str,
        note: str | None = None,
        evidence: dict | None = None,
        person_id: str | None = None,
    ) -> dict:
        """A lifecycle step from the mobile app or the console. Rejection reassigns at once."""
        now = _now()
        updates: list[FieldTaskUpdate] = []
        async with self.db.connection() as conn:
            async with conn.transaction(), conn.cursor() as cur:
                task = await repository.get_task(cur, task_id, lock=True)
                if task is None:
                    raise NotifyError(
                        404, "task_not_found", f"no field task {task_id!r}; list tasks with GET /api/tasks"
                    )
                if role == "field_staff" and task["assignee"] != actor:
                    raise NotifyError(403, "not_your_task", f"task {task_id} is not assigned to you")
                if new == "assigned" and (
                    person_id not in self.people or "field_staff" not in self.people[person_id].roles
                ):
                    raise NotifyError(
                        422,
                        "unknown_person",
                        f"{person_id!r} is not field staff in the roster; pick one of "
                        f"{sorted(p.id for p in self.roster.people if 'field_staff' in p.roles)}",
                    )
                if not assigning.can_move(task["status"], new):
                    raise NotifyError(
                        409,
                        "invalid_transition",
                        f"task {task_id} is {task['status']!r}; it cannot become {new!r}. Allowed next: "
                        f"{sorted(assigning.TRANSITIONS.get(task['status'], set())) or 'none (finished)'}",
                    )
                planner = Planner(self, await repository.recent_sends(cur, list(self.people), 60), {}, now)
                if new == "rejected":
                    await repository.set_task_state(
                        cur,
                        task_id,
                        status="rejected",
                        assignee=task["assignee"],
                        actor=actor,
                        note=note,
                        rejected_by=task["assignee"],
                    )
                    updates.append(
                        FieldTaskUpdate(
                            task_id=task_id, status="rejected", assignee=task["assignee"], note=note, at=now
                        )
                    )
                    exclude = set(task["rejected_by"]) | {task["assignee"]}
                    updates += await self.assign(cur, task, planner, actor="notify", exclude=exclude)
                elif new == "assigned":
                    updates += await self.assign(
                        cur, task, planner, actor=actor, exclude=set(), person_id=person_id
                    )
                else:
                    await repository.set_task_state(
                        cur,
                        task_id,
                        status=new,
                        assignee=task["assignee"],
                        actor=actor,
                        note=note,
                        evidence=evidence,
                    )
                    updates.append(
                        FieldTaskUpdate(
                            task_id=task_id,
                            status=new,  # type: ignore[arg-type]  # checked by can_move above
                            assignee=task["assignee"],
                            note=note,
                            at=now,
                        )
                    )
                inserted = await repository.insert_deliveries(cur, planner.rows)
                letters = await self._no_address_letters(cur, planner.rows, inserted)
                await repository.add_to_outbox(cur, self._outbox_rows(updates))
                if role in ("dispatcher", "admin") and new in ("assigned", "cancelled", "done"):
                    await repository.audit(
                        cur,
                        actor,
                        role,
                        "assign" if new == "assigned" else new,
                        f"task:{task_id}",
                        {"person_id": person_id, "note": note},
                    )
                elif role == "field_staff":
                    await repository.audit(cur, actor, role, f"task_{new}", f"task:{task_id}", {"note": note})
            await self._send_letters(letters)
            fresh = [r for r in planner.rows if r["status"] == "sending" and r["idempotency_key"] in inserted]
            if fresh:
                self.queue.put_nowait(fresh)
            if updates:
                await self.publish_outbox()
            out = await repository.get_task(conn, task_id)
            assert out is not None
            return out

    def _outbox_rows(self, updates: list[FieldTaskUpdate]) -> list[tuple[str, str, bytes, bytes]]:
        """Task status updates as outbox records, each under an event id of its content (a republish is the same
        event to a consumer)."""
        rows = []
        for u in updates:
            digest = hashlib.sha256(u.model_dump_json().encode()).hexdigest()[:32]
            event_id = f"task-update-{digest}"
            value = kafka.encode(kafka.envelope("field_task_update", SERVICE, u, occurred_at=u.at, event_id=event_id))
            rows.append((event_id, self.s.notify_task_updates_topic, u.task_id.encode(), value))
        return rows

    async def publish_outbox(self) -> int:
        """Publish the task updates committed but not yet on Kafka (right after each change, and from the timers
        for any a crash or a Kafka timeout left behind). Returns how many were published."""
        published: list[str] = []
        async with self.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            rows = await repository.pending_outbox(cur)
            try:
                for event_id, topic, key, value in rows:
                    await self.producer.send_and_wait(topic, value, key=key)
                    published.append(event_id)
            except Exception as exc:  # noqa: BLE001 - the rest stay in the outbox for the next round
                logger.warning("task updates left in the outbox: %s", exc)
            await repository.mark_published(cur, published)
        return len(published)

    # sending ----------------------------------------------------------------------------------
    async def dispatch_fresh(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                rows = await asyncio.wait_for(self.queue.get(), timeout=self.s.notify_poll_s)
            except TimeoutError:
                continue
            await self._send_rows(rows)

    async def dispatch_due(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            async with self.db.connection() as conn:
                rows = await repository.claim_due(conn, 500, self.s.notify_lease_s)
            if rows:
                await self._send_rows(rows)
            if len(rows) < 500:
                try:
                    await asyncio.wait_for(stop.wait(), self.s.notify_poll_s)
                except TimeoutError:
                    pass

    async def _send_rows(self, rows: list[dict]) -> None:
        """Start sending; held rows of one recipient, channel and group go out as one digest."""
        digests: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            if r.get("hold_reason") in ("grouped", "rate_limit"):
                key = (
                    r["recipient"],
                    r["channel"],
                    r["hold_reason"],
                    r["group_key"] if r["hold_reason"] == "grouped" else None,
                )
                digests[key].append(r)
            else:
                await self._spawn([r])
        for group in digests.values():
            await self._spawn(group)

    async def _spawn(self, group: list[dict]) -> None:
        await self.sem.acquire()
        t = asyncio.create_task(self._send_group(group))
        self.inflight.add(t)
        t.add_done_callback(self.inflight.discard)

    async def _send_group(self, group: list[dict]) -> None:
        try:
            group = await self._still_ours(group)
            if not group:
                return
            lead = group[0]
            msgs = [
                r["message"] if isinstance(r["message"], dict) else json.loads(r["message"]) for r in group
            ]
            if len(group) > 1:
                message = render.digest_message(msgs, lead["language"])
                data = {"digest": [m.get("data", {}) for m in msgs]}
            else:
                message, data = msgs[0], msgs[0].get("data", {})
            out = Outgoing(
                delivery_id=lead["delivery_id"],
                idempotency_key=lead["idempotency_key"],
                subject_kind=lead["subject_kind"],
                subject_id=lead["subject_id"],
                recipient=lead["recipient"],
                address=lead["address"],
                language=lead["language"],
                tier=lead["tier"],
                severity=lead.get("severity"),
                message={"subject": message["subject"], "body": message["body"]},
                data=data,
            )
            attempts = int(lead.get("attempts") or 0) + 1
            status, err, nxt, sent = "sent", None, None, None
            t0 = time.perf_counter()
            try:
                await self.channels[lead["channel"]].send(out)
                sent = _now()
            except PermanentError as exc:
                status, err = "dead", str(exc)
            except TransientError as exc:
                err = str(exc)
                status = "dead" if attempts >= self.routing.max_attempts else "pending"
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not stop the other deliveries
                logger.exception("channel %s raised", lead["channel"])
                err = f"{type(exc).__name__}: {exc}"
                status = "dead" if attempts >= self.routing.max_attempts else "pending"
            LATENCY.labels(SERVICE, f"send_{lead['channel']}").observe(time.perf_counter() - t0)
            MESSAGES.labels(SERVICE, f"send_{lead['channel']}", status).inc()
            if status == "pending":
                backoff = self.routing.retry_backoff_s * 2 ** (attempts - 1) * (0.8 + 0.4 * random.random())
                nxt = _now() + timedelta(seconds=backoff)
            if status == "dead":
                err = f"{err} (after {attempts} attempt(s); check the address and the {lead['channel']} settings)"
                await self._dead_letter(lead, err)
            if status == "sent":
                self.sent += len(group)
            for r in group:
                into = lead["delivery_id"] if (r is not lead and status == "sent") else None
                self.results.append((r["delivery_id"], status, err, nxt, sent, into))
        finally:
            self.sem.release()

    async def _still_ours(self, group: list[dict]) -> list[dict]:
        """The rows of a group whose lease is still ours. A row that waited for a free sender until its lease nearly
        ran out may have been claimed again by the retry loop (dispatch_due), which sends it too: such rows are
        re-leased if no one took them meanwhile, and dropped if someone did. Rows well within their lease go on
        without a database round trip."""
        margin = timedelta(seconds=min(10.0, self.s.notify_lease_s / 4))
        now = _now()
        late = [r for r in group if r.get("status") == "sending" and isinstance(r.get("next_attempt_at"), datetime)
                and r["next_attempt_at"] - now < margin]
        if not late:
            return group
        async with self.db.connection() as conn:
            kept = await repository.keep_leases(conn, [(r["delivery_id"], r["next_attempt_at"]) for r in late],
                                                self.s.notify_lease_s)
        lost = {r["delivery_id"] for r in late} - kept
        if lost:
            logger.info("deliveries re-leased by the retry loop are left to it", extra={"fields": {"n": len(lost)}})
        return [r for r in group if r["delivery_id"] not in lost]

    def _delivery_letter(self, row: dict, reason: str) -> tuple[dict, bytes]:
        """The dead letter (envelope, encoded) of a delivery given up, without the recipient's address."""
        # the dead-letter topic and table are internal, not restricted: a person's phone number or e-mail address
        # stays in the deliveries row only (a channel's error text may quote it too)
        address = str(row.get("address") or "")
        shareable = {k: (v.replace(address, "<address>") if address and isinstance(v, str) else v)
                     for k, v in row.items() if k != "address"}
        reason = reason.replace(address, "<address>") if address else reason
        _, value, _ = kafka.dead_letter(
            stage=SERVICE,
            reason_code="processing_error",
            reason=reason,
            origin=f"delivery:{row['delivery_id']}",
            original=json.dumps(shareable, default=str, ensure_ascii=False).encode(),
        )
        return json.loads(value), value

    async def _dead_letter(self, row: dict, reason: str) -> None:
        """A delivery given up: to the dead-letter topic and table (the deliveries row keeps it too)."""
        try:
            env, value = self._delivery_letter(row, f"delivery failed: {reason}")
            async with self.db.connection() as conn, conn.cursor() as cur:
                await repository.insert_dead_letter(cur, env)
            await self.producer.send_and_wait(DEADLETTER, value, key=row["delivery_id"].encode())
        except Exception:  # noqa: BLE001 - the deliveries row keeps the reason whatever Kafka does
            logger.exception("dead letter for %s not recorded", row["delivery_id"])
        DEAD_LETTERS.labels(SERVICE, "delivery_failed").inc()

    async def _no_address_letters(self, cur, rows: list[dict], inserted: set[str]) -> list[tuple[str, bytes]]:
        """Dead letters, in the caller's transaction, for the deliveries just planned that have nowhere to go (no
        address in the roster): given up at once, like any delivery given up, they were only marked dead before and
        never reached the dead-letter topic or table. Returns (key, value) to send to Kafka after the commit."""
        out = []
        for r in rows:
            if r["hold_reason"] == "no_address" and r["idempotency_key"] in inserted:
                env, value = self._delivery_letter(r, f"delivery not possible: {r['error']}")
                await repository.insert_dead_letter(cur, env)
                out.append((r["delivery_id"], value))
                DEAD_LETTERS.labels(SERVICE, "no_address").inc()
        return out

    async def _send_letters(self, letters: list[tuple[str, bytes]]) -> None:
        """Dead letters already committed to the table, to the dead-letter topic."""
        for key, value in letters:
            try:
                await self.producer.send_and_wait(DEADLETTER, value, key=key.encode())
            except Exception:  # noqa: BLE001 - the dead_letters table keeps it whatever Kafka does
                logger.exception("dead letter %s not published to %s", key, DEADLETTER)

    async def flush(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._flush_results()
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    async def _flush_results(self) -> None:
        if not self.results:
            return
        batch, self.results = self.results, []
        async with self.db.connection() as conn:
            await repository.record_results(conn, batch)

    async def drain(self, timeout: float = 30) -> None:
        """Wait until everything started has been sent and recorded (tests and benchmarks)."""
        deadline = time.monotonic() + timeout
        while (self.inflight or not self.queue.empty()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await self._flush_results()

    # timers -----------------------------------------------------------------------------------
    async def timers(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.run_timers_once()
            await self.publish_outbox()
            try:
                await asyncio.wait_for(stop.wait(), self.s.notify_poll_s)
            except TimeoutError:
                pass

    async def run_timers_once(self) -> int:
        """Fire due escalations and task deadlines; returns how many fired."""
        now = _now()
        async with self.db.connection() as conn:
            async with conn.transaction(), conn.cursor() as cur:
                due = await repository.due_escalations(cur)
                tasks = await repository.due_task_deadlines(cur)
                if not due and not tasks:
                    return 0
                planner = Planner(self, await repository.recent_sends(cur, list(self.people), 60), {}, now)
                for e in due:
                    rule = self.rules.get(e["rule"])
                    if rule is None or e["acknowledged_at"] is not None or e["resolved_at"] is not None:
                        if rule is None:
                            log(
                                logger,
                                logging.WARNING,
                                "escalation stopped: its rule is gone from the routing file",
                                alert_id=e["alert_id"],
                                rule=e["rule"],
                            )
                        await repository.advance_escalation(cur, e["alert_id"], e["tier"], e["round"], None)
                        continue
                    if (release := self.held_until(e["severity"], now)) is not None:
                        # quiet hours for this severity: each escalation would only be held until morning too, and
                        # the supervisor woke to one "not acknowledged" per ack_timeout of the night. The clock
                        # starts again when the notifications go out
                        await repository.advance_escalation(
                            cur, e["alert_id"], e["tier"], e["round"], self._next_due(rule, e["tier"], release)
                        )
                        continue
                    tier, round_ = e["tier"] + 1, e["round"]
                    if tier >= len(rule.tiers):
                        tier, round_ = len(rule.tiers) - 1, round_ + 1
                    self._plan_alert(planner, e, rule, tier, round_, None)
                    await repository.advance_escalation(
                        cur, e["alert_id"], tier, round_, self._next_due(rule, tier, now)
                    )
                    log(
                        logger,
                        logging.INFO,
                        "alert escalated",
                        alert_id=e["alert_id"],
                        tier=tier,
                        round=round_,
                    )
                    MESSAGES.labels(SERVICE, "escalate", "alert").inc()
                tz = self.routing.tz
                for t in tasks:
                    people = expand(self.routing.tasks.deadline_escalate_to, self.roster, now, tz)
                    if t["assignee"] and t["assignee"] not in people:
                        people.append(t["assignee"])
                    view = dict(t)
                    planner.add(
                        purpose="task-deadline",
                        kind="task",
                        subject_id=t["task_id"],
                        severity=_task_severity(t),
                        people=people,
                        channels=self.routing.tasks.deadline_channels,
                        tier=1,
                        round_=0,
                        source_event_id=None,
                        **_task_push(view, tz, deadline=True),
                    )
                    await repository.mark_deadline_escalated(cur, t["task_id"])
                    MESSAGES.labels(SERVICE, "escalate", "task_deadline").inc()
                inserted = await repository.insert_deliveries(cur, planner.rows)
                letters = await self._no_address_letters(cur, planner.rows, inserted)
        await self._send_letters(letters)
        fresh = [r for r in planner.rows if r["status"] == "sending" and r["idempotency_key"] in inserted]
        if fresh:
            self.queue.put_nowait(fresh)
        return len(due) + len(tasks)


def _task_severity(task: dict) -> str:
    return {"low": "minor", "normal": "major", "high": "major", "urgent": "critical"}.get(
        task["priority"], "major"
    )


def _task_push(view: dict, tz, *, deadline: bool = False) -> dict:
    """Planner.add's render_for and data of a task push; for a task about a person (a worker's rescue: its
    evidence names the worker) also what the city's common webhook receives: no pseudonym, no position, no
    description (it names the worker). The task on the internal topic, the assignee's phone and e-mail keep them:
    the crew must find the person."""
    out: dict[str, Any] = {
        "data": _task_data(view),
        "render_for": lambda lang: render.task_message(view, lang, tz=tz, deadline=deadline),
    }
    evidence = view.get("evidence")
    worker = evidence.get("worker") if isinstance(evidence, dict) else None
    if isinstance(worker, str) and worker:
        public = dict(view, evidence=None, description_zh=None, description_en=None, lat=None, lon=None,
                      title_zh=str(view["title_zh"]).replace(worker, "***"),
                      title_en=str(view["title_en"]).replace(worker, "***"))
        out["shared_data"] = _task_data(public)
        out["shared_render_for"] = lambda lang: render.task_message(public, lang, tz=tz, deadline=deadline,
                                                                    shared=True)
    return out


def _task_data(task: dict) -> dict:
    out = {}
    for k in (
        "task_id",
        "kind",
        "domain",
        "priority",
        "status",
        "assignee",
        "title_zh",
        "title_en",
        "description_zh",
        "description_en",
        "lat",
        "lon",
        "district",
        "required_skills",
        "due_at",
        "related_alert_id",
    ):
        v = task.get(k)
        out[k] = v.isoformat() if isinstance(v, datetime) else v
    return out


async def connect(db_url: str) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(db_url)
