"""E-mail over SMTP (standard library smtplib, run off the event loop)."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage
from email.utils import make_msgid

from shared.notify.channels import Channel, Outgoing, PermanentError, TransientError, register


@register("email")
class EmailChannel(Channel):
    def address(self, person) -> str | None:
        return person.email

    def _send(self, out: Outgoing) -> None:
        msg = EmailMessage()
        msg["From"] = self.s.notify_smtp_from
        msg["To"] = out.address
        msg["Subject"] = out.message["subject"]
        msg["Message-ID"] = make_msgid(idstring=out.idempotency_key[:24], domain="cityops.local")
        msg["X-CityOps-Delivery"] = out.delivery_id
        msg["Content-Language"] = "zh-CN" if out.language == "zh" else "en"
        msg.set_content(out.message["body"], charset="utf-8")
        try:
            with smtplib.SMTP(
                self.s.notify_smtp_host, self.s.notify_smtp_port, timeout=self.s.notify_http_timeout_s
            ) as smtp:
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(f"SMTP refused {out.address}: {exc.recipients}") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise TransientError(
                f"SMTP {self.s.notify_smtp_host}:{self.s.notify_smtp_port}: {exc!r}"
            ) from exc

    async def send(self, out: Outgoing) -> None:
        await asyncio.to_thread(self._send, out)
