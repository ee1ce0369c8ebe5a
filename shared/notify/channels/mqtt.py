"""MQTT push to a field worker's phone: QoS 1 on `field/<person_id>/tasks`.

The broker's ACL lets only that person read the topic (shared/stack/mosquitto.py), and only
`svc-notify` write under `field/#`. `send` returns when the broker's PUBACK arrives.
"""

from __future__ import annotations

import asyncio
import json

from shared.notify.channels import Channel, Outgoing, TransientError, register


@register("mqtt")
class MqttChannel(Channel):
    client = None

    async def start(self) -> None:
        import paho.mqtt.client as mqtt

        self.loop = asyncio.get_running_loop()
        self.pending: dict[int, asyncio.Future] = {}
        self.connected = asyncio.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"svc-notify-{id(self):x}", protocol=mqtt.MQTTv5
        )
        c.username_pw_set(self.s.notify_mqtt_user, self.s.mqtt_password("services", self.s.notify_mqtt_user))
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.reconnect_delay_set(1, 10)
        self.client = c
        c.connect_async(self.s.mqtt_host, self.s.mqtt_port, keepalive=30)
        c.loop_start()
        try:
            await asyncio.wait_for(self.connected.wait(), 30)
        except TimeoutError:
            raise RuntimeError(
                f"cannot connect to MQTT {self.s.mqtt_host}:{self.s.mqtt_port} as "
                f"{self.s.notify_mqtt_user}: is the stack up (`cityops stack up`)?"
            ) from None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self.loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.loop.call_soon_threadsafe(self.connected.clear)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        def done() -> None:
            fut = self.pending.pop(mid, None)
            if fut is not None and not fut.done():
                if reason_code.is_failure:
                    fut.set_exception(TransientError(f"MQTT broker refused publish: {reason_code}"))
                else:
                    fut.set_result(None)

        self.loop.call_soon_threadsafe(done)

    async def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def address(self, person) -> str | None:
        return f"field/{person.id}/tasks"

    async def send(self, out: Outgoing) -> None:
        if not self.connected.is_set():
            raise TransientError("MQTT broker not connected")
        payload = json.dumps(out.json(), ensure_ascii=False, separators=(",", ":")).encode()
        assert self.client is not None
        fut = self.loop.create_future()
        info = self.client.publish(out.address, payload, qos=1)
        if info.rc != 0:
            raise TransientError(f"MQTT publish to {out.address} failed: rc={info.rc}")
        # the PUBACK may already have arrived before we registered the future
        self.pending[info.mid] = fut
        if info.is_published():
            self.pending.pop(info.mid, None)
            return
        try:
            await asyncio.wait_for(fut, self.s.notify_http_timeout_s)
        except TimeoutError:
            self.pending.pop(info.mid, None)
            raise TransientError(
                f"no PUBACK for {out.address} within {self.s.notify_http_timeout_s} s"
            ) from None
