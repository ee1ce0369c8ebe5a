"""The MQTT → Kafka gateway: at-least-once from sensor to Kafka.

A reading is acknowledged to Mosquitto (PUBACK) only after Kafka has acknowledged the record
(acks=all, idempotent producer). If the gateway dies in between, the broker keeps the
unacknowledged message in the gateway's persistent session (MQTT v5 session expiry) and
sends it again when the gateway reconnects; replicas share the load through a shared
subscription. Anything that fails validation goes to the dead-letter topic with its reason
and original bytes — also acknowledged only once the dead letter is in Kafka.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from datetime import UTC, datetime
from functools import partial

from services.ingest import repository
from services.ingest.domain.validate import Accepted, Validator
from services.ingest.settings import IngestSettings
from shared import kafka
from shared.observability import DEAD_LETTERS, LATENCY, MESSAGES
from shared.service import Readiness

logger = logging.getLogger("cityops.ingest")
SERVICE = "ingest"
MAX_BUFFER = 20_000


class Gateway:
    def __init__(self, settings: IngestSettings, readiness: Readiness):
        self.s = settings
        self.readiness = readiness
        self._buf: collections.deque = collections.deque()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._pending = 0
        self._client = None
        self._connected = threading.Event()
        self.stats = collections.Counter()

    # --- MQTT side (paho's network thread) ------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("mqtt connect refused", extra={"fields": {"reason": str(reason_code)}})
            return
        from paho.mqtt.subscribeoptions import SubscribeOptions

        client.subscribe(f"$share/{self.s.ingest_share_group}/city/#", options=SubscribeOptions(qos=1))
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.readiness.set, "mqtt", False)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.readiness.set, "mqtt", True)

    def _on_message(self, client, userdata, msg) -> None:
        published_at = None
        props = getattr(msg, "properties", None)
        for k, v in getattr(props, "UserProperty", None) or []:
            if k == "published_at":
                try:
                    published_at = float(v)
                except ValueError:
                    published_at = None
        # back-pressure: hold the network thread (the broker then holds further messages)
        while len(self._buf) > MAX_BUFFER:
            time.sleep(0.002)
        self._buf.append((msg.topic, msg.payload, msg.mid, msg.qos, published_at))
        if self._loop is not None and self._wake is not None and not self._wake.is_set():
            self._loop.call_soon_threadsafe(self._wake.set)

    def _connect_mqtt(self):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"cityops-ingest-{self.s.ingest_instance}",
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(self.s.ingest_mqtt_user, self.s.mqtt_password("services", self.s.ingest_mqtt_user))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.max_inflight_messages_set(1000)
        props = Properties(PacketTypes.CONNECT)
        # without a session expiry MQTT v5 drops the session (and unacked messages) at disconnect
        props.SessionExpiryInterval = self.s.ingest_session_expiry_s
        props.ReceiveMaximum = 1000
        client.connect(self.s.mqtt_host, self.s.mqtt_port, keepalive=30, clean_start=False, properties=props)
        client.loop_start()
        return client

    # --- Kafka side (asyncio) ---------------------------------------------------------------
    def _delivered(self, mid: int, qos: int, published_at: float | None, outcome: str, fut: asyncio.Future) -> None:
        self._pending -= 1
        exc = fut.exception()
        if exc is not None:
            # not acked: the broker redelivers after the restart this failure causes
            self._failure = exc
            return
        if qos > 0:
            self._client.ack(mid, qos)
        MESSAGES.labels(SERVICE, "gateway", outcome).inc()
        self.stats[outcome] += 1
        if published_at is not None:
            LATENCY.labels(SERVICE, "publish_to_kafka").observe(max(time.time() - published_at, 0.0))

    async def _refresh_registry(self, validator: Validator, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.s.ingest_registry_refresh_s)
            except TimeoutError:
                pass
            if stop.is_set():
                return
            try:
                validator.update_registry(await asyncio.to_thread(repository.load_registry, self.s.db_url))
            except Exception as exc:  # noqa: BLE001 - keep the last registry; the DB may be restarting
                logger.warning("registry refresh failed", extra={"fields": {"error": str(exc)}})

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        registry = await asyncio.to_thread(repository.load_registry, self.s.db_url)
        self.readiness.set("db")
        validator = Validator(
            registry, source=f"ingest/{self.s.ingest_instance}", max_bytes=self.s.ingest_max_payload_bytes,
            max_future=_td(self.s.ingest_max_future_s), max_age=_td(self.s.ingest_max_age_s),
        )
        producer = kafka.producer(self.s.kafka_bootstrap)
        await producer.start()
        self.readiness.set("kafka")
        self._client = await asyncio.to_thread(self._connect_mqtt)
        refresher = asyncio.create_task(self._refresh_registry(validator, stop))
        logger.info("gateway running", extra={"fields": {"sensors": len(registry)}})
        try:
            while not stop.is_set():
                if self._failure is not None:
                    raise RuntimeError(f"Kafka did not acknowledge a record: {self._failure}")
                if not self._buf:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                    except TimeoutError:
                        pass
                    continue
                now = datetime.now(UTC)
                for _ in range(min(len(self._buf), 2000)):
                    topic, payload, mid, qos, published_at = self._buf.popleft()
                    res = validator.validate(topic, payload, now)
                    if isinstance(res, Accepted):
                        fut = await producer.send(res.topic, res.value, key=res.key)
                        outcome = "accepted"
                    else:
                        gw = topic.split("/")[1] if topic.count("/") >= 1 else None
                        key, value, _ = kafka.dead_letter(
                            stage=SERVICE, reason_code=res.reason_code, reason=res.reason, origin=f"mqtt:{topic}",
                            original=_shareable(validator, topic, res.sensor_id, payload), gateway_id=gw,
                            sensor_id=res.sensor_id, received_at=now,
                        )
                        fut = await producer.send(kafka.DEADLETTER_TOPIC, value, key=key)
                        DEAD_LETTERS.labels(SERVICE, res.reason_code).inc()
                        outcome = "dead_letter"
                    self._pending += 1
                    fut.add_done_callback(partial(self._delivered, mid, qos, published_at, outcome))
                await asyncio.sleep(0)
        finally:
            refresher.cancel()
            try:
                await producer.flush()
                await producer.stop()
            finally:
                await asyncio.sleep(0.2)  # let the last PUBACKs leave
                self._client.disconnect()
                self._client.loop_stop()


def _shareable(validator, topic: str, sensor_id: str | None, payload: bytes) -> bytes:
    """What a dead letter may keep of a rejected payload: a wearable's (a worker's position, heart rate) only as
    its digest, see `kafka.redacted_personal`."""
    ids = {sensor_id, topic.rsplit("/", 1)[-1]}
    if any(sid and getattr(validator.registry.get(sid), "personal", False) for sid in ids):
        return kafka.redacted_personal(payload, "payload")
    return payload


def _td(seconds: int):
    from datetime import timedelta

    return timedelta(seconds=seconds)
