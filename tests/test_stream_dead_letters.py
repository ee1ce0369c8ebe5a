"""What the shared stream loop keeps of a record it dead-letters (shared/stream.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from types import SimpleNamespace

import pytest

from schemas.topics import DEADLETTER, OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from shared.service import Readiness
from shared.stream import PoisonRecord, StreamProcessor

WEARABLE = json.dumps({
    "event_id": "e-1", "type": "observation.personal", "payload": {
        "sensor_id": "wear-017", "values": {"lat": {"value": 30.2512}, "lon": {"value": 120.1633},
                                            "heart_rate": {"value": 142.75}}}}).encode()


async def _refuse(events):
    raise PoisonRecord("not an Observation: ('values', 'heart_rate'): extra fields not permitted")


def _processor(topic: str) -> StreamProcessor:
    return StreamProcessor("emergency-personal", "unused:9092", [topic], "g", _refuse, Readiness())


def _record(topic: str, value: bytes, offset: int = 42):
    return SimpleNamespace(topic=topic, partition=0, offset=offset, value=value, timestamp=0)


def _kept(out) -> bytes:
    assert out.topic == DEADLETTER
    return base64.b64decode(json.loads(out.value)["payload"]["original_b64"])


@pytest.mark.parametrize("how", ["schema_violation", "malformed_json"])
def test_a_refused_personal_record_leaves_only_its_digest(how):
    """Before: a record on the restricted personal topic that the handler refused (or that was not JSON) went to
    cityops.deadletter.v1, and from there to the unrestricted dead_letters table, in full: a worker's position and
    heart rate. The gateway and the sink already kept only a digest; now the shared loop does too."""
    p = _processor(PERSONAL_OBSERVATIONS)
    if how == "schema_violation":
        rec = _record(PERSONAL_OBSERVATIONS, WEARABLE)
        [out] = asyncio.run(p._one_by_one([json.loads(WEARABLE)], [rec]))  # noqa: SLF001 - the loop's own path
    else:
        rec = _record(PERSONAL_OBSERVATIONS, WEARABLE[:-5])
        out = p._dead(rec, "malformed_json", "unreadable record")  # noqa: SLF001
    kept = _kept(out)
    assert kept.startswith(b"redacted personal record, sha256 ")
    for secret in (b"wear-017", b"30.2512", b"120.1633", b"142.75"):
        assert secret not in kept and secret not in out.value
    # a redelivery of the same record is still recognisable
    again = p._dead(rec, "malformed_json", "unreadable record")  # noqa: SLF001
    assert _kept(again) == kept


def test_a_refused_public_record_is_kept_whole():
    p = _processor(OBSERVATION_TOPIC["air"])
    bad = b'{"payload": {"sensor_id": "aq-1", "values": "x"}}'
    out = p._dead(_record(OBSERVATION_TOPIC["air"], bad), "processing_error", "not an Observation")  # noqa: SLF001
    assert _kept(out) == bad
