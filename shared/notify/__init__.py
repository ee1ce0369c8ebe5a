"""The notification service: routing, channels, escalation until acknowledged, field tasks, dispatcher console."""
