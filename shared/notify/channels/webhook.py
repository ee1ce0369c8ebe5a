"""Webhook: an HTTP POST of the notification as JSON, signed with HMAC-SHA256.

Headers: `X-CityOps-Timestamp`, `X-CityOps-Signature: sha256=<hex of HMAC(secret, "<timestamp>.<body>")>`,
`Idempotency-Key` (the same on every retry of one delivery, so a receiver can drop repeats).

The HTTP/1.1 client is a small keep-alive pool on asyncio streams: httpx managed 144 requests/s
on the benchmark machine (its pool does work per waiting request), this one over 1,000.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from urllib.parse import urlsplit

from shared.notify.channels import Channel, Outgoing, PermanentError, TransientError, register
from shared.notify.domain.auth import webhook_signature


class HttpPool:
    """Keep-alive HTTP/1.1 connections per (scheme, host, port), at most `size` each."""

    def __init__(self, size: int, timeout_s: float):
        self.size, self.timeout_s = size, timeout_s
        self.idle: dict[tuple, list] = {}
        self.gates: dict[tuple, asyncio.Semaphore] = {}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise PermanentError(
                f"webhook URL {url!r} is not http(s)://host/...; fix the roster or CITYOPS_NOTIFY_WEBHOOK_URL"
            )
        key = (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))
        gate = self.gates.setdefault(key, asyncio.Semaphore(self.size))
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {u.netloc}",
            f"Content-Length: {len(body)}",
            "Connection: keep-alive",
        ]
        head += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        async with gate:
            for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: one fresh retry
                conn = self._take(key)
                fresh = conn is None
                try:
                    async with asyncio.timeout(self.timeout_s):
                        if conn is None:
                            ctx = ssl.create_default_context() if key[0] == "https" else None
                            conn = await asyncio.open_connection(key[1], key[2], ssl=ctx)
                        reader, writer = conn
                        writer.write(request)
                        await writer.drain()
                        status, resp_headers, resp = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    if conn is not None:
                        conn[1].close()
                    if fresh or attempt == 1:
                        raise TransientError(f"webhook {url}: {exc!r}") from exc
                    continue
                except TimeoutError:
                    if conn is not None:
                        conn[1].close()
                    raise TransientError(f"webhook {url}: no answer within {self.timeout_s} s") from None
                if resp_headers.get("connection", "").lower() == "close":
                    conn[1].close()
                else:
                    self.idle.setdefault(key, []).append(conn)
                return status, resp
        raise AssertionError("unreachable")

    def _take(self, key):
        idle = self.idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn[0].at_eof():
                return conn
            conn[1].close()
        return None

    async def close(self) -> None:
        for conns in self.idle.values():
            for _, w in conns:
                w.close()
        self.idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while (h := await reader.readline()) not in (b"\r\n", b"\n"):
        if not h:
            raise asyncio.IncompleteReadError(b"", None)
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
        headers["connection"] = "close"
    return status, headers, body


@register("webhook")
class WebhookChannel(Channel):
    pool: HttpPool | None = None

    async def start(self) -> None:
        if not self.s.notify_webhook_secret:
            raise RuntimeError(
                "the webhook channel needs CITYOPS_NOTIFY_WEBHOOK_SECRET (receivers check the "
                "X-CityOps-Signature HMAC with it); export it or remove webhook from the routing file"
            )
        self.pool = HttpPool(self.s.notify_webhook_connections, self.s.notify_http_timeout_s)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    def address(self, person) -> str | None:
        return person.webhook_url or self.s.notify_webhook_url

    async def send(self, out: Outgoing) -> None:
        assert self.pool is not None and self.s.notify_webhook_secret
        body = json.dumps(out.json(), ensure_ascii=False, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "cityops-notify/1",
            "X-CityOps-Timestamp": ts,
            "X-CityOps-Signature": webhook_signature(self.s.notify_webhook_secret, ts, body),
            "Idempotency-Key": out.idempotency_key,
            "X-CityOps-Delivery": out.delivery_id,
        }
        status, resp = await self.pool.post(out.address, body, headers)
        if status in (408, 429) or status >= 500:
            raise TransientError(f"webhook {out.address} answered {status}")
        if status >= 300:
            raise PermanentError(f"webhook {out.address} refused with {status}: {resp[:200]!r}")
