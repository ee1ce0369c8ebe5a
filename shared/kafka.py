"""Kafka clients configured the one way CityOps uses them, and envelope helpers."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka.abc import ConsumerRebalanceListener
from pydantic import BaseModel

from schemas.deadletter import DeadLetterReason
from schemas.topics import BY_NAME, DEADLETTER

DLQ_NAMESPACE = uuid.UUID("0b8f8f4e-1a7e-4d0a-8f4c-7d9b1c2e3f40")


SECURITY_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL", "SSL")


def security_options(env: dict[str, str] | None = None) -> dict[str, Any]:
    """How this process authenticates to Kafka, from `CITYOPS_KAFKA_SECURITY_PROTOCOL` (PLAINTEXT by default),
    `CITYOPS_KAFKA_SASL_MECHANISM` (SCRAM-SHA-512), `CITYOPS_KAFKA_USERNAME`, `CITYOPS_KAFKA_PASSWORD` and, for
    TLS, `CITYOPS_KAFKA_SSL_CAFILE`. In Kubernetes each service is a Strimzi KafkaUser whose ACLs name its
    topics; locally the stack's SASL listener checks the same kind of ACLs (see shared/stack/kafka.py)."""
    e = os.environ if env is None else env
    proto = e.get("CITYOPS_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if proto not in SECURITY_PROTOCOLS:
        raise ValueError(f"CITYOPS_KAFKA_SECURITY_PROTOCOL={proto!r}: use one of {', '.join(SECURITY_PROTOCOLS)}")
    opts: dict[str, Any] = {"security_protocol": proto}
    if proto.startswith("SASL"):
        user, password = e.get("CITYOPS_KAFKA_USERNAME"), e.get("CITYOPS_KAFKA_PASSWORD")
        if not user or not password:
            raise ValueError(f"{proto} needs CITYOPS_KAFKA_USERNAME and CITYOPS_KAFKA_PASSWORD (the KafkaUser's "
                             "name and the password from its Secret)")
        opts.update(sasl_mechanism=e.get("CITYOPS_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                    sasl_plain_username=user, sasl_plain_password=password)
    if proto.endswith("SSL"):
        import ssl

        cafile = e.get("CITYOPS_KAFKA_SSL_CAFILE") or None
        if cafile and not os.path.exists(cafile):
            raise ValueError(f"CITYOPS_KAFKA_SSL_CAFILE={cafile} does not exist: mount the Kafka cluster's CA "
                             "certificate there (Strimzi: the <cluster>-cluster-ca-cert Secret, key ca.crt)")
        opts["ssl_context"] = ssl.create_default_context(cafile=cafile)
    return opts


def producer(bootstrap: str, **kw: Any):
    """acks=all + idempotence: a record Kafka acknowledged is on disk once, whatever retries happen."""
    from aiokafka import AIOKafkaProducer

    opts = dict(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024, request_timeout_ms=30000, **security_options(),
    )
    opts.update(kw)
    return AIOKafkaProducer(**opts)


def consumer(bootstrap: str, group_id: str, *topics: str, **kw: Any):
    """Manual commits, from the earliest offset for a new group: nothing is skipped, commits follow the store.

    `CITYOPS_KAFKA_GROUP_PREFIX` prefixes every group id (a demo run or a test gets groups of its own), and
    `CITYOPS_KAFKA_START_AT_MS` makes a group with no committed offset start at that time instead of at the
    start of retention (so a fresh run does not replay a week of history)."""
    from aiokafka import AIOKafkaConsumer

    opts = dict(
        bootstrap_servers=bootstrap, group_id=os.environ.get("CITYOPS_KAFKA_GROUP_PREFIX", "") + group_id,
        enable_auto_commit=False, auto_offset_reset="earliest",
        max_poll_records=2000, fetch_max_wait_ms=200, isolation_level="read_committed", **security_options(),
    )
    opts.update(kw)
    c = AIOKafkaConsumer(**opts)
    start_at = os.environ.get("CITYOPS_KAFKA_START_AT_MS")
    if topics:
        c.subscribe(list(topics), listener=_StartAt(c, int(start_at)) if start_at else None)
    return c


class _StartAt(ConsumerRebalanceListener):
    """On assignment, partitions without a committed offset start at a point in time."""

    def __init__(self, consumer, start_ms: int):
        self.c = consumer
        self.start_ms = start_ms

    async def on_partitions_revoked(self, revoked) -> None:
        return None

    async def on_partitions_assigned(self, assigned) -> None:
        fresh = [tp for tp in assigned if await self.c.committed(tp) is None]
        if not fresh:
            return
        ends = await self.c.end_offsets(fresh)
        found = await self.c.offsets_for_times({tp: self.start_ms for tp in fresh})
        for tp in fresh:
            hit = found.get(tp)
            self.c.seek(tp, hit.offset if hit is not None else ends[tp])


def envelope(event_type: str, source: str, payload: BaseModel | dict, *, occurred_at: datetime,
             event_id: str | None = None) -> dict:
    body = payload.model_dump(mode="json") if isinstance(payload, BaseModel) else payload
    return {
        "event_id": event_id or str(uuid.uuid4()),
        "type": event_type,
        "schema_version": 1,
        "source": source,
        "occurred_at": occurred_at.isoformat(),
        "ingested_at": datetime.now(UTC).isoformat(),
        "payload": body,
    }


def encode(env: dict) -> bytes:
    return json.dumps(env, separators=(",", ":"), ensure_ascii=False).encode()


def event_for_topic(topic: str, source: str, payload: BaseModel, *, occurred_at: datetime,
                    event_id: str | None = None) -> bytes:
    """Encode `payload` in the envelope of `topic`, checking it is the topic's declared schema."""
    t = BY_NAME[topic]
    if not isinstance(payload, t.payload):
        raise TypeError(f"{topic} carries {t.payload.__name__}, not {type(payload).__name__}")
    return encode(envelope(t.event_type, source, payload, occurred_at=occurred_at, event_id=event_id))


def storable_text(text: str) -> str:
    """`text` as UTF-8 and PostgreSQL can hold it: a lone surrogate (valid in JSON, "\\ud800") and NUL become
    visible escapes. Rejected input quotes what the sender wrote; quoting it must not crash whoever stores it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def is_restricted(topic: str) -> bool:
    """Whether `topic` carries personal data (schemas/topics.py access "restricted")."""
    t = BY_NAME.get(topic)
    return t is not None and t.access == "restricted"


def redacted_personal(original: bytes, what: str = "record") -> bytes:
    """What a dead letter keeps of personal data: its digest. The dead-letter topic and table are internal, not
    restricted; the digest still recognises a redelivery and lets an operator match it against the device's log."""
    return f"redacted personal {what}, sha256 {hashlib.sha256(original).hexdigest()}".encode()


def dead_letter(*, stage: str, reason_code: DeadLetterReason, reason: str, origin: str, original: bytes,
                gateway_id: str | None = None, sensor_id: str | None = None,
                received_at: datetime | None = None) -> tuple[bytes, bytes, str]:
    """(key, value, event_id) of a dead letter. The event id depends only on where the bytes came
    from and what they were, so a redelivered poison message is stored once. Text fields may quote any
    input (see `storable_text`); the original bytes are kept as they were."""
    from schemas.deadletter import DeadLetter

    received_at = received_at or datetime.now(UTC)
    stage, reason, origin = storable_text(stage), storable_text(reason[:2000]), storable_text(origin)
    gateway_id = storable_text(gateway_id) if gateway_id is not None else None
    sensor_id = storable_text(sensor_id) if sensor_id is not None else None
    digest = hashlib.sha256(origin.encode() + b"\0" + original).hexdigest()
    event_id = str(uuid.uuid5(DLQ_NAMESPACE, f"{stage}|{reason_code}|{digest}"))
    dl = DeadLetter(
        reason_code=reason_code, reason=reason, stage=stage, origin=origin, gateway_id=gateway_id,
        sensor_id=sensor_id, original_b64=base64.b64encode(original).decode(), received_at=received_at,
    )
    value = encode(envelope("dead_letter", stage, dl, occurred_at=received_at, event_id=event_id))
    key = (sensor_id or origin).encode()
    return key, value, event_id


DEADLETTER_TOPIC = DEADLETTER
