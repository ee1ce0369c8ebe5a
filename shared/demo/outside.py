"""The parties outside the city that the demo's notifications reach.

A city system receiving webhooks and an SMS provider are stand-ins (HTTP servers that record
what they get — the one kind of fake the project allows); e-mail goes to a real SMTP server
(aiosmtpd) playing the city's mail relay. They run in a background thread for the demo's life.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any


@dataclass
class Mailbox:
    messages: list[dict[str, Any]] = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = message_from_bytes(envelope.content)
        self.messages.append({"to": list(envelope.rcpt_tos), "subject": str(msg.get("Subject", ""))})
        return "250 OK"


class OutsideParties:
    def __init__(self) -> None:
        from shared.notify.testing import HttpReceiver

        self.webhook = HttpReceiver()
        self.sms = HttpReceiver()
        self.mailbox = Mailbox()
        self.secret = secrets.token_urlsafe(24)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="outside-parties", daemon=True)
        self._smtp = None

    def start(self) -> dict[str, str]:
        from aiosmtpd.controller import Controller

        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.webhook.start(), self._loop).result(10)
        asyncio.run_coroutine_threadsafe(self.sms.start(), self._loop).result(10)
        import socket

        with socket.socket() as sock:  # aiosmtpd needs a concrete port to probe its own start
            sock.bind(("127.0.0.1", 0))
            smtp_port = sock.getsockname()[1]
        self._smtp = Controller(self.mailbox, hostname="127.0.0.1", port=smtp_port)
        self._smtp.start()
        return {
            "CITYOPS_NOTIFY_WEBHOOK_URL": self.webhook.url,
            "CITYOPS_NOTIFY_WEBHOOK_SECRET": self.secret,
            "CITYOPS_NOTIFY_SMTP_HOST": "127.0.0.1",
            "CITYOPS_NOTIFY_SMTP_PORT": str(smtp_port),
            "CITYOPS_NOTIFY_SMS_URL": f"http://127.0.0.1:{self.sms.port}/sms",
            "CITYOPS_NOTIFY_SMS_TOKEN": secrets.token_urlsafe(12),
            # a 5-minute acknowledgement timeout becomes 6 s, so the demo shows an escalation
            "CITYOPS_NOTIFY_ESCALATION_SCALE": "0.02",
        }

    def received(self) -> dict[str, int]:
        return {"webhook_posts": len(self.webhook.requests), "sms": len(self.sms.requests),
                "emails": len(self.mailbox.messages)}

    def stop(self) -> None:
        if self._smtp is not None:
            self._smtp.stop()
        asyncio.run_coroutine_threadsafe(self.webhook.close(), self._loop).result(5)
        asyncio.run_coroutine_threadsafe(self.sms.close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
