"""Webhook: an HTTP POST of the notification as JSON, signed with HMAC-SHA256."""

from __future__ import annotations

import json
import time

import httpx

from shared.notify.channels import Channel, Outgoing, PermanentError, TransientError, register
from shared.notify.domain.auth import webhook_signature


@register("webhook")
class WebhookChannel(Channel):
    client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if not self.s.notify_webhook_secret:
            raise RuntimeError("the webhook channel needs CITYOPS_NOTIFY_WEBHOOK_SECRET (receivers check the "
                               "X-CityOps-Signature HMAC with it); export it or remove webhook from the routing file")
        limits = httpx.Limits(max_connections=self.s.notify_send_concurrency,
                              max_keepalive_connections=self.s.notify_send_concurrency)
        self.client = httpx.AsyncClient(timeout=self.s.notify_http_timeout_s, limits=limits)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def address(self, person) -> str | None:
        return person.webhook_url or self.s.notify_webhook_url

    async def send(self, out: Outgoing) -> None:
        assert self.client is not None and self.s.notify_webhook_secret
        body = json.dumps(out.json(), ensure_ascii=False, separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-CityOps-Timestamp": ts,
            "X-CityOps-Signature": webhook_signature(self.s.notify_webhook_secret, ts, body),
            "Idempotency-Key": out.idempotency_key,
            "X-CityOps-Delivery": out.delivery_id,
        }
        try:
            r = await self.client.post(out.address, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransientError(f"webhook {out.address}: {exc!r}") from exc
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise TransientError(f"webhook {out.address} answered {r.status_code}")
        if r.status_code >= 300:
            raise PermanentError(f"webhook {out.address} refused with {r.status_code}: {r.text[:200]}")
