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
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
