"""`python -m deploy.topics`: create every topic of schemas/topics.py (partitions, retention) on the broker
at CITYOPS_KAFKA_BOOTSTRAP; existing topics are left alone. The compose file runs it once before the
services; on Kubernetes the Strimzi topic operator does the same from the KafkaTopic resources."""

from __future__ import annotations

import asyncio

from shared.settings import load
from shared.stack.kafka import _ensure_topics


def main() -> int:
    created = asyncio.run(_ensure_topics(load().kafka_bootstrap))
    print(f"created {len(created)} topic(s): {', '.join(created) or 'none, all existed'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
