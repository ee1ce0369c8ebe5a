"""SMS through a provider's HTTP API: POST {to, text, reference} with a bearer token."""

from __future__ import annotations

import httpx

from shared.notify.channels import Channel, Outgoing, PermanentError, TransientError, register


@register("sms")
class SmsChannel(Channel):
    client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if not self.s.notify_sms_url:
            raise RuntimeError(
                "the sms channel needs CITYOPS_NOTIFY_SMS_URL (the provider's send endpoint); "
                "export it or remove sms from the routing file"
            )
        self.client = httpx.AsyncClient(timeout=self.s.notify_http_timeout_s)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def address(self, person) -> str | None:
        return person.phone

    async def send(self, out: Outgoing) -> None:
        assert self.client is not None and self.s.notify_sms_url
        # SMS is short: subject only, the console has the rest.
        text = out.message["subject"][:300]
        headers = {"Idempotency-Key": out.idempotency_key}
        if self.s.notify_sms_token:
            headers["Authorization"] = f"Bearer {self.s.notify_sms_token}"
        try:
            r = await self.client.post(
                self.s.notify_sms_url,
                headers=headers,
                json={"to": out.address, "text": text, "reference": out.idempotency_key},
            )
        except httpx.HTTPError as exc:
            raise TransientError(f"SMS provider: {exc!r}") from exc
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise TransientError(f"SMS provider answered {r.status_code}")
        if r.status_code >= 300:
            raise PermanentError(f"SMS provider refused {out.address}: {r.status_code} {r.text[:200]}")
