"""Kafka, for other city systems: the delivery record on the deliveries topic, keyed by subject."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.deliveries import NotificationDelivery
from shared import kafka
from shared.notify.channels import Channel, Outgoing, TransientError, register


@register("kafka")
class KafkaChannel(Channel):
    producer = None

    async def start(self) -> None:
        self.producer = kafka.producer(self.s.kafka_bootstrap)
        await self.producer.start()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    def address(self, person) -> str | None:
        return self.s.notify_deliveries_topic

    async def send(self, out: Outgoing) -> None:
        now = datetime.now(UTC)
        rec = NotificationDelivery(
            delivery_id=out.delivery_id,
            idempotency_key=out.idempotency_key,
            subject_kind=out.subject_kind,  # type: ignore[arg-type]
            subject_id=out.subject_id,
            recipient=out.recipient,
            channel="kafka",
            language=out.language,  # type: ignore[arg-type]
            tier=out.tier,
            status="sent",
            attempts=1,
            created_at=now,
            sent_at=now,
        )
        value = kafka.encode(
            kafka.envelope("notification_delivery", "notify", rec, occurred_at=now, event_id=out.delivery_id)
        )
        assert self.producer is not None
        try:
            await self.producer.send_and_wait(out.address, value, key=out.subject_id.encode())
        except Exception as exc:  # noqa: BLE001 - every producer failure is worth a retry
            raise TransientError(f"Kafka {out.address}: {exc!r}") from exc
