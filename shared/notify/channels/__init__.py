"""Notification channels: plugins behind one small abstract base, registered by name.

A channel turns one rendered notification into one send to one address. It raises
`TransientError` for what a retry may fix (timeouts, 5xx, broker away) and `PermanentError` for
what it will not (no address, 4xx): the dispatcher retries the first with backoff and dead-letters
the second at once.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.notify.domain.config import Person
    from shared.notify.settings import NotifySettings


class ChannelError(Exception):
    pass


class TransientError(ChannelError):
    """Retry later."""


class PermanentError(ChannelError):
    """Retrying will not help: dead letter now."""


@dataclass
class Outgoing:
    delivery_id: str
    idempotency_key: str
    subject_kind: str
    subject_id: str
    recipient: str
    address: str
    language: str
    tier: int
    severity: str | None
    message: dict  # subject, body
    data: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict:
        return {
            "delivery_id": self.delivery_id,
            "idempotency_key": self.idempotency_key,
            "kind": self.subject_kind,
            "subject_id": self.subject_id,
            "recipient": self.recipient,
            "language": self.language,
            "tier": self.tier,
            "severity": self.severity,
            "subject": self.message["subject"],
            "body": self.message["body"],
            "data": self.data,
        }


class Channel(ABC):
    name: str = ""

    def __init__(self, settings: NotifySettings):
        self.s = settings

    async def start(self) -> None:  # noqa: B027 - optional hook, most channels need no connection
        """Open connections; raise with a clear message if the channel cannot work at all."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    def address(self, person: Person) -> str | None:
        """Where this channel reaches `person`, or None if it cannot."""

    @abstractmethod
    async def send(self, out: Outgoing) -> None:
        """Deliver one notification; return only once the far side has accepted it."""


REGISTRY: dict[str, type[Channel]] = {}
BUILTIN = ("webhook", "email", "mqtt", "kafka", "sms")


def register(name: str):
    def deco(cls: type[Channel]) -> type[Channel]:
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def load_builtin() -> dict[str, type[Channel]]:
    for name in BUILTIN:
        importlib.import_module(f"shared.notify.channels.{name}")
    return REGISTRY
