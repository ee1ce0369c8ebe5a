"""Kafka helpers shared by the service tests that run against the real stack.

Writing records (`publish`), reading a topic back from a point in time (`read_since`), and building
Observation envelopes the way the ingest gateway publishes them (`observation_envelopes`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable


async def publish(bootstrap: str, records: Iterable[tuple[str, bytes, bytes]]) -> None:
    """Send every (topic, key, value) record with the project's producer and wait until all are acknowledged."""
    from shared import kafka

    p = kafka.producer(bootstrap)
    await p.start()
    try:
        futs = [await p.send(t, v, key=k) for t, k, v in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


async def read_since(bootstrap: str, topic: str, since_ms: int,
                     match: Callable[[bytes], bool] | None = None) -> list[dict]:
    """Every record of `topic` from `since_ms` (epoch ms) on whose raw bytes `match` accepts (all without
    `match`), JSON-decoded, up to the end offsets the topic had when reading began."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        if not c.partitions_for_topic(topic):
            await c._client.force_metadata_update()  # noqa: SLF001 - a group-less consumer knows no topics yet
        tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic) or ()]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        found = await c.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            c.seek(tp, found[tp].offset if found.get(tp) else ends[tp])
        out = []
        while [tp for tp in tps if await c.position(tp) < ends[tp]]:
            batch = await c.getmany(timeout_ms=1000, max_records=5000)
            for recs in batch.values():
                out += [r.value for r in recs if match is None or match(r.value)]
        return [json.loads(v) for v in out]
    finally:
        await c.stop()


def observation_envelopes(domain: str, specs: dict, readings, *, gateway_qc: bool = False,
                          id_suffix: str = "") -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) per sensor and time of `readings` (columns time, sensor_id, quantity, value), as
    Observation envelopes of `domain` on its observation topic, built the way the ingest gateway builds them.

    `specs` maps the sensor ids of `readings` to their SensorSpec. With `gateway_qc` the values carry the
    gateway's own QARTOD flags (services/ingest/domain/qc.py, one fresh StreamQc per call); without, every
    value is flagged good (qc 1, no tests). `id_suffix` is appended to each sensor id and district in the
    envelopes (the key too), e.g. to make them unique to a test run.
    """
    from schemas.topics import OBSERVATION_TOPIC
    from services.ingest.domain.qc import QcConfig, StreamQc

    qc = StreamQc() if gateway_qc else None
    out = []
    for (t, sid), g in readings.groupby(["time", "sensor_id"], sort=True):
        spec, tsid = specs[sid], f"{sid}{id_suffix}"
        values = {}
        for q, v in zip(g["quantity"], g["value"], strict=True):
            qs = spec.quantities[q]
            if qc is None:
                flag, tests = 1, {}
            else:
                flag, tests = qc.check((sid, q), t.timestamp(), float(v), QcConfig(qs.valid_min, qs.valid_max,
                                                                                     qs.max_rate_per_h))
            values[q] = {"value": float(v), "unit": qs.unit, "qc": flag, "qc_tests": tests}
        district = f"{spec.district}{id_suffix}" if id_suffix else spec.district
        env = {"event_id": f"{tsid}|{t.isoformat()}", "type": f"observation.{domain}", "schema_version": 1,
               "source": "test", "occurred_at": t.isoformat(), "ingested_at": t.isoformat(),
               "payload": {"sensor_id": tsid, "domain": domain, "kind": spec.kind, "gateway_id": spec.gateway_id,
                           "district": district, "lat": spec.lat, "lon": spec.lon, "observed_at": t.isoformat(),
                           "values": values}}
        out.append((OBSERVATION_TOPIC[domain], tsid.encode(), json.dumps(env).encode()))
    return out
