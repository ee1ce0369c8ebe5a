"""Run the real ingest gateway and sink inside a test, against the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from contextlib import asynccontextmanager

import paho.mqtt.client as mqtt
import psycopg

from schemas.registry import QuantitySpec, SensorSpec
from services.ingest.settings import IngestSettings
from shared.service import Readiness
from shared.stack.config import StackConfig
from shared.stack.mosquitto import Mosquitto
from shared.storage.registry import upsert_sensors


def air_sensor(sensor_id: str, gateway_id: str) -> SensorSpec:
    return SensorSpec(
        sensor_id=sensor_id, domain="air", kind="lowcost_pm", gateway_id=gateway_id, lat=30.25, lon=120.15,
        district="d05",
        quantities={
            "pm25": QuantitySpec(unit="ug/m3", valid_min=0, valid_max=1000, accepts=["mg/m3"], max_rate_per_h=300),
            "temp": QuantitySpec(unit="degC", valid_min=-40, valid_max=60, accepts=["degF", "K"], max_rate_per_h=10),
        },
    )


def register(db_url: str, sensors: list[SensorSpec]) -> Mosquitto:
    with psycopg.connect(db_url) as conn:
        upsert_sensors(conn, sensors)
    mq = Mosquitto(StackConfig.from_env())
    mq.apply(gateways=sorted({s.gateway_id for s in sensors}))
    return mq


def gateway_client(mq: Mosquitto, gateway_id: str, port: int) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{gateway_id}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(gateway_id, mq.password_for("gateways", gateway_id))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish_all(client: mqtt.Client, items: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
    for i in infos:
        i.wait_for_publish(timeout=30)


def settings_for(db_url: str, token: str | None = None, **kw) -> IngestSettings:
    token = token or secrets.token_hex(3)
    return IngestSettings(  # type: ignore[call-arg]
        db_url=db_url, ingest_instance=f"t{token}", ingest_share_group=f"t{token}", sink_group=f"sink-t{token}",
        ingest_session_expiry_s=120, ingest_registry_refresh_s=2.0,
        # a fresh sink group starts at this test, not at the start of a busy topic's retention
        kafka_start_at_ms=int(time.time() * 1000) - 5000, **kw,
    )


@asynccontextmanager
async def running(settings: IngestSettings, *, gateway: bool = True, sink: bool = True):
    """Start the gateway and/or sink as tasks; wait until ready; stop them at the end."""
    from services.ingest.handlers import Gateway
    from services.ingest.sink import ObservationSink

    stop = asyncio.Event()
    tasks, objs = [], {}
    # shared.kafka.consumer() reads the start time from the environment, as the deployed services do
    previous = os.environ.get("CITYOPS_KAFKA_START_AT_MS")
    if settings.kafka_start_at_ms is not None and previous is None:
        os.environ["CITYOPS_KAFKA_START_AT_MS"] = str(settings.kafka_start_at_ms)
    if gateway:
        r = Readiness("db", "kafka", "mqtt")
        objs["gateway"] = (Gateway(settings, r), r)
    if sink:
        r = Readiness("db", "kafka")
        objs["sink"] = (ObservationSink(settings, r), r)
    for obj, _ in objs.values():
        tasks.append(asyncio.create_task(obj.run(stop)))
    for _ in range(600):
        if all(r.ready for _, r in objs.values()):
            break
        for t in tasks:
            if t.done():
                t.result()
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"ingest not ready: {[r.state for _, r in objs.values()]}")
    try:
        yield {k: v[0] for k, v in objs.items()}
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if previous is None:
            os.environ.pop("CITYOPS_KAFKA_START_AT_MS", None)


async def kafka_tail(bootstrap: str, topic: str):
    """A group-less consumer positioned at the end of `topic` now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    parts = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or set())]
    if not parts:
        await c._client.force_metadata_update()  # noqa: SLF001
        parts = [TopicPartition(topic, p) for p in (c.partitions_for_topic(topic) or set())]
    c.assign(parts)
    await c.seek_to_end(*parts)
    for tp in parts:
        await c.position(tp)
    return c


async def collect(consumer, predicate, n: int, timeout: float = 60.0) -> list[dict]:
    import time

    out: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=500)
        for recs in batch.values():
            for r in recs:
                env = json.loads(r.value)
                if predicate(env):
                    out.append(env)
    return out
