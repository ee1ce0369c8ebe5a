"""Structured JSON logs and Prometheus metrics, the same in every service."""

from __future__ import annotations

import json
import logging
import sys
import time

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("cityops_messages_total", "Messages handled", ["service", "stage", "outcome"])
DEAD_LETTERS = Counter("cityops_dead_letters_total", "Messages sent to the dead-letter topic", ["service", "reason"])
ERRORS = Counter("cityops_errors_total", "Errors by kind", ["service", "kind"])
LATENCY = Histogram(
    "cityops_stage_latency_seconds", "Latency of a pipeline stage", ["service", "stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)
PENDING_WORK = Gauge("cityops_pending_work", "Work a service holds in memory after committing its input "
                     "(e.g. SCADA steps waiting for the leak model)", ["service"])
CONSUMER_LAG = Gauge("cityops_consumer_lag_messages", "Kafka consumer lag", ["service", "topic", "partition"])


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log(logger: logging.Logger, level: int, msg: str, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})


async def update_consumer_lag(consumer, service: str) -> int:
    """Set the lag gauge for every assigned partition; returns the total lag."""
    total = 0
    parts = consumer.assignment()
    if not parts:
        return 0
    ends = await consumer.end_offsets(list(parts))
    for tp in parts:
        try:
            pos = await consumer.position(tp)
        except Exception:  # noqa: BLE001 - partition being revoked
            continue
        lag = max(ends.get(tp, pos) - pos, 0)
        CONSUMER_LAG.labels(service, tp.topic, str(tp.partition)).set(lag)
        total += lag
    return total
