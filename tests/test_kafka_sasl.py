"""Other city systems reach Kafka only through the stack's SCRAM listener, where ACLs let them read the public
topics and nothing else: not the personal-data topic, not internal topics, and no writes. The suite's own
processes use the loopback PLAINTEXT listener. Real broker, real credentials from `cityops stack up`."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

TAG = secrets.token_hex(4)


def _client_env(stack_env) -> dict[str, str]:
    from shared.stack.kafka import OUTSIDE_READER

    f = Path(stack_env["CITYOPS_STATE_DIR"]) / "kafka" / "clients" / f"{OUTSIDE_READER}.env"
    assert f.exists(), f"`cityops stack up` wrote no credentials for {OUTSIDE_READER}"
    assert f.stat().st_mode & 0o077 == 0, "client credentials must be readable by their owner only"
    return dict(line.split("=", 1) for line in f.read_text().splitlines() if line)


@pytest.fixture
def outside(stack_env, monkeypatch) -> dict[str, str]:
    """The process now speaks to Kafka as the outside reader, the way shared.kafka reads its settings."""
    env = _client_env(stack_env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


async def _produce_plain(bootstrap: str, topic: str, value: bytes) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await p.start()
    try:
        await (await p.send(topic, value, key=TAG.encode()))
    finally:
        await p.stop()


async def _read_as_outside(bootstrap: str, topic: str, needle: bytes, group: str, timeout_s: float = 30) -> bytes:
    from shared import kafka

    c = kafka.consumer(bootstrap, group, topic)
    await c.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=1000)).values():
                for r in recs:
                    if needle in r.value:
                        await c.commit()
                        return r.value
        raise AssertionError(f"the outside reader saw no record {needle!r} on {topic}")
    finally:
        await c.stop()


def test_outside_reader_reads_a_public_topic_over_scram(stack_env, outside, monkeypatch):
    needle = f"sasl-public-{TAG}".encode()
    monkeypatch.setenv("CITYOPS_KAFKA_START_AT_MS", str(int(time.time() * 1000) - 1000))
    asyncio.run(_produce_plain(stack_env["CITYOPS_KAFKA_BOOTSTRAP"], "cityops.alerts.v1",
                               json.dumps({"probe": needle.decode()}).encode()))
    got = asyncio.run(_read_as_outside(outside["CITYOPS_KAFKA_BOOTSTRAP"], "cityops.alerts.v1", needle,
                                       f"external-test-{TAG}"))
    assert json.loads(got)["probe"] == needle.decode()


@pytest.mark.parametrize("topic", ["cityops.observations.personal.restricted.v1", "cityops.tasks.v1"])
def test_outside_reader_cannot_read_personal_or_internal_topics(outside, topic):
    from aiokafka.errors import TopicAuthorizationFailedError

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(_read_as_outside(outside["CITYOPS_KAFKA_BOOTSTRAP"], topic, b"x", f"external-test-{TAG}", 15))


def test_outside_reader_cannot_use_a_group_outside_its_prefix(outside):
    from aiokafka.errors import GroupAuthorizationFailedError

    with pytest.raises(GroupAuthorizationFailedError):
        asyncio.run(_read_as_outside(outside["CITYOPS_KAFKA_BOOTSTRAP"], "cityops.alerts.v1", b"x",
                                     "cityops-notify", 15))


def test_outside_reader_cannot_write(outside):
    from aiokafka.errors import TopicAuthorizationFailedError

    from shared import kafka

    async def go():
        p = kafka.producer(outside["CITYOPS_KAFKA_BOOTSTRAP"], enable_idempotence=False, request_timeout_ms=10000)
        await p.start()
        try:
            await (await p.send("cityops.alerts.v1", b'{"forged": true}'))
        finally:
            await p.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(go())


def test_wrong_password_is_refused(outside, monkeypatch):
    from aiokafka.errors import KafkaConnectionError, KafkaError

    from shared import kafka

    monkeypatch.setenv("CITYOPS_KAFKA_PASSWORD", "not-" + outside["CITYOPS_KAFKA_PASSWORD"])

    async def go():
        c = kafka.consumer(outside["CITYOPS_KAFKA_BOOTSTRAP"], f"external-test-{TAG}", "cityops.alerts.v1",
                           request_timeout_ms=10000)
        try:
            await c.start()
        finally:
            await c.stop()

    with pytest.raises((KafkaConnectionError, KafkaError)):
        asyncio.run(go())


def test_security_settings_fail_clearly():
    from shared.kafka import security_options

    assert security_options({}) == {"security_protocol": "PLAINTEXT"}
    with pytest.raises(ValueError, match="CITYOPS_KAFKA_USERNAME and CITYOPS_KAFKA_PASSWORD"):
        security_options({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    with pytest.raises(ValueError, match="use one of"):
        security_options({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "KERBEROS-ISH"})
    opts = security_options({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "CITYOPS_KAFKA_USERNAME": "u",
                             "CITYOPS_KAFKA_PASSWORD": "p"})
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512" and opts["ssl_context"] is not None
    with pytest.raises(ValueError, match="mount the Kafka cluster's CA"):
        security_options({"CITYOPS_KAFKA_SECURITY_PROTOCOL": "SSL", "CITYOPS_KAFKA_SSL_CAFILE": "/nonexistent/ca.crt"})
