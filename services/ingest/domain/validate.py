"""From raw MQTT bytes to a validated, normalised, flagged observation — or a dead letter.

Pure: no broker, no database. The gateway feeds it (topic, bytes, receive time) and the
registry; it answers `Accepted` (what to publish where) or `Rejected` (reason code and words).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError

from schemas.observations import SensorMessage, WireValue
from schemas.registry import SensorSpec
from schemas.topics import OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from services.ingest.domain.qc import QcConfig, StreamQc
from shared.units import UnitError, convert

EVENT_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-4c55-9a53-5b0f3c1c2b10")
# the schema's own sensor_id pattern: a rejected payload's sensor_id is kept (as the dead letter's key and column)
# only if it is one a sensor could have, not whatever text the sender put there
SENSOR_ID = re.compile(next(m.pattern for m in SensorMessage.model_fields["sensor_id"].metadata
                            if getattr(m, "pattern", None)))


@dataclass(frozen=True)
class Accepted:
    topic: str
    key: bytes
    value: bytes
    event_id: str
    sensor_id: str


@dataclass(frozen=True)
class Rejected:
    reason_code: str
    reason: str
    sensor_id: str | None = None


def event_id_for(sensor_id: str, time_iso: str) -> str:
    """The same reading always gets the same event id, so a resend is recognisable downstream."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{sensor_id}|{time_iso}"))


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


class Validator:
    def __init__(
        self,
        registry: dict[str, SensorSpec],
        *,
        source: str = "ingest",
        max_bytes: int = 16_384,
        max_future: timedelta = timedelta(minutes=5),
        max_age: timedelta = timedelta(days=7),
        dedup_capacity: int = 500_000,
    ):
        self.registry = registry
        self.source = source
        self.max_bytes = max_bytes
        self.max_future = max_future
        self.max_age = max_age
        self.qc = StreamQc()
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._dedup_capacity = dedup_capacity
        self._qc_cfg: dict[tuple[str, str], QcConfig] = {}

    def update_registry(self, registry: dict[str, SensorSpec]) -> None:
        self.registry = registry
        self._qc_cfg.clear()

    def validate(self, mqtt_topic: str, payload: bytes, received_at: datetime) -> Accepted | Rejected:
        if len(payload) > self.max_bytes:
            return Rejected("payload_too_large", f"payload is {len(payload)} bytes, the limit is {self.max_bytes}")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected("bad_encoding", f"payload is not UTF-8 ({exc.reason} at byte {exc.start})")
        try:
            obj = json.loads(text, parse_constant=_reject_constant)
        except ValueError as exc:
            if "non-finite" in str(exc):
                return Rejected("non_finite_value", f"payload contains {str(exc).split()[-1]}; send only finite numbers")
            return Rejected("malformed_json", f"not valid JSON: {exc}")
        except RecursionError:  # a few KB of '[[[[...' exhausts the parser's stack: bad input, not a crash
            return Rejected("malformed_json", "not valid JSON: nested too deeply; send a flat JSON object")
        if not isinstance(obj, dict):
            return Rejected("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        sid = obj.get("sensor_id")
        sid_hint = sid if isinstance(sid, str) and SENSOR_ID.fullmatch(sid) else None
        try:
            msg = SensorMessage.model_validate(obj)
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:3])
            return Rejected("schema_violation", errs, sid_hint)

        parts = mqtt_topic.split("/")
        if len(parts) != 3 or parts[0] != "city":
            return Rejected("topic_mismatch", f"topic {mqtt_topic!r} is not city/<gateway_id>/<sensor_id>", msg.sensor_id)
        gateway_id, topic_sensor = parts[1], parts[2]
        if topic_sensor != msg.sensor_id:
            return Rejected("topic_mismatch", f"topic names sensor {topic_sensor!r} but payload says {msg.sensor_id!r}",
                            msg.sensor_id)
        spec = self.registry.get(msg.sensor_id)
        if spec is None:
            return Rejected("unknown_sensor", f"sensor {msg.sensor_id!r} is not in the registry", msg.sensor_id)
        if spec.gateway_id != gateway_id:
            return Rejected("gateway_not_owner",
                            f"gateway {gateway_id!r} published for sensor {msg.sensor_id!r}, which belongs to "
                            f"{spec.gateway_id!r}", msg.sensor_id)
        t = msg.time
        if t > received_at + self.max_future:
            return Rejected("timestamp_in_future", f"time {t.isoformat()} is more than {self.max_future} ahead of "
                            f"the gateway clock ({received_at.isoformat()})", msg.sensor_id)
        if t < received_at - self.max_age:
            return Rejected("timestamp_too_old", f"time {t.isoformat()} is older than {self.max_age}", msg.sensor_id)

        values = {}
        for q, raw in msg.values.items():
            qspec = spec.quantities.get(q)
            if qspec is None:
                return Rejected("unknown_quantity", f"sensor {msg.sensor_id!r} has no quantity {q!r} "
                                f"(registered: {', '.join(spec.quantities)})", msg.sensor_id)
            if isinstance(raw, WireValue):
                try:
                    v = convert(raw.value, raw.unit, qspec.unit, qspec.accepts + [qspec.unit])
                except UnitError as exc:
                    return Rejected("unknown_unit", f"{q}: {exc}", msg.sensor_id)
            else:
                v = float(raw)
            if not math.isfinite(v):
                return Rejected("non_finite_value", f"{q} is {v}; send only finite numbers", msg.sensor_id)
            values[q] = (v, qspec)

        time_iso = t.astimezone().isoformat() if t.tzinfo is None else t.isoformat()
        dkey = (msg.sensor_id, t.isoformat())
        if dkey in self._seen:
            return Rejected("duplicate", f"reading of {msg.sensor_id} at {time_iso} was already received",
                            msg.sensor_id)
        self._seen[dkey] = None
        if len(self._seen) > self._dedup_capacity:
            self._seen.popitem(last=False)

        t_s = t.timestamp()
        out_values = {}
        for q, (v, qspec) in values.items():
            cfg = self._qc_cfg.get((spec.sensor_id, q))
            if cfg is None:
                cfg = self._qc_cfg[(spec.sensor_id, q)] = QcConfig(qspec.valid_min, qspec.valid_max, qspec.max_rate_per_h)
            flag, tests = self.qc.check((spec.sensor_id, q), t_s, v, cfg)
            out_values[q] = {"value": v, "unit": qspec.unit, "qc": flag, "qc_tests": tests}

        event_id = event_id_for(spec.sensor_id, t.isoformat())
        envelope = {
            "event_id": event_id,
            # the event type of the topic it goes to (schemas/topics.py): wearables are personal data
            "type": "observation.personal" if spec.personal else f"observation.{spec.domain}",
            "schema_version": 1,
            "source": self.source,
            "occurred_at": t.isoformat(),
            "ingested_at": received_at.isoformat(),
            "payload": {
                "sensor_id": spec.sensor_id,
                "domain": spec.domain,
                "kind": spec.kind,
                "gateway_id": spec.gateway_id,
                "district": spec.district,
                "lat": spec.lat,
                "lon": spec.lon,
                "observed_at": t.isoformat(),
                "values": out_values,
            },
        }
        return Accepted(
            # personal data goes only to the restricted topic
            topic=PERSONAL_OBSERVATIONS if spec.personal else OBSERVATION_TOPIC[spec.domain],
            key=spec.sensor_id.encode(),
            value=json.dumps(envelope, separators=(",", ":")).encode(),
            event_id=event_id,
            sensor_id=spec.sensor_id,
        )
