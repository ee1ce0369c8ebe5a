"""Local stand-ins for parties outside the city: an HTTP receiver for webhooks and an SMS provider.

The only fakes the notification tests use (the brief allows one for an outside party); everything
of our own (Kafka, Mosquitto, PostgreSQL, SMTP via aiosmtpd) is real. A plain asyncio HTTP/1.1
server with keep-alive: small, and fast enough for the benchmark.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    def json(self):
        return json.loads(self.body)


@dataclass
class HttpReceiver:
    """Records every POST; answers `status` (settable, e.g. 503 to test retries)."""

    status: int = 200
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    server: asyncio.AbstractServer | None = None

    async def start(self, host: str = "127.0.0.1") -> HttpReceiver:
        self.server = await asyncio.start_server(self._conn, host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                _, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                self.requests.append(Received(path, headers, body, time.time()))
                status = self.status
                payload = b'{"ok":true}' if status < 300 else b'{"error":"stand-in refuses"}'
                writer.write(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()


async def create_topics(bootstrap: str, names: list[str], partitions: int = 1) -> None:
    """Private topics so a test or benchmark never reads another engineer's alerts."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    except Exception:  # noqa: BLE001 - cleanup only
        pass
    finally:
        await admin.close()


def encode_event(event_type: str, payload, *, event_id: str | None = None) -> bytes:
    """An envelope as the domain services publish it (any topic name)."""
    from datetime import UTC, datetime

    from shared import kafka

    return kafka.encode(
        kafka.envelope(event_type, "test", payload, occurred_at=datetime.now(UTC), event_id=event_id)
    )


class ServiceRunner:
    """Runs a NotifyService's workers in the current event loop; `stop()` ends them like SIGTERM would."""

    def __init__(self, svc):
        self.svc = svc
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self, timeout: float = 60) -> ServiceRunner:
        self.task = asyncio.create_task(self.svc.run(self.stop_event))
        deadline = time.monotonic() + timeout
        while not self.svc.readiness.ready:
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise TimeoutError(f"notify service not ready after {timeout} s: {self.svc.readiness.state}")
            await asyncio.sleep(0.1)
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 60)
