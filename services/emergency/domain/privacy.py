"""Personal data (数据安全, 隐私保护): pseudonymous worker ids, shared views, retention.

Worker positions and health readings stay on restricted topics and tables. The service's
own state knows a worker by a stable keyed pseudonym (HMAC-SHA256 of the id with a secret
key: the id cannot be recovered or guessed by hashing candidate ids without the key).
Anything on a shared topic names the worker by an episode pseudonym instead, an HMAC of
the stable one and the episode's start: an alert's raise, updates and clearing share it,
but two episodes of one worker (this month's fall, last month's heart rate) cannot be
linked by anyone reading the alerts.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pandas as pd

from services.emergency.domain.safety import ALERT_NAMES, SafetyAlert

DEFAULT_RETENTION_DAYS = 7


def pseudonymise(worker_id: str, key: bytes) -> str:
    """Stable pseudonym of a worker id under `key` (e.g. 'w-3f9a…', 16 hex digits)."""
    if len(key) < 16:
        raise ValueError("pseudonymisation key must be at least 16 bytes")
    return "w-" + hmac.new(key, worker_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def episode_pseudonym(pseudonym: str, start: Any, key: bytes) -> str:
    """The name of a worker on shared topics for one episode that began at `start` ('w-…', 16 hex digits).

    Keyed on the worker's stable pseudonym and the start (normalised to UTC), so every message of the episode
    names the same subject and a restarted service with the key can find its worker again; without the key two
    episodes cannot be told to be one person's."""
    if len(key) < 16:
        raise ValueError("pseudonymisation key must be at least 16 bytes")
    t = pd.Timestamp(start)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    msg = f"episode|{pseudonym}|{t.isoformat()}"
    return "w-" + hmac.new(key, msg.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def shared_alert(alert: SafetyAlert, key: bytes, district: str | None, episode_start: Any) -> dict[str, Any]:
    """What a shared topic may carry about a worker alert: episode pseudonym, kind, grade, zone, district.

    No position, no health value, no worker id and no stable pseudonym: the message text is rebuilt around
    the episode's pseudonym. Dispatchers with access to the restricted topic see the full alert.
    """
    pid = episode_pseudonym(pseudonymise(alert.worker_id, key), episode_start, key)
    zh, en, _ = ALERT_NAMES[alert.kind]
    return {
        "time": alert.time.isoformat(),
        "worker": pid,
        "kind": alert.kind,
        "severity": int(alert.severity),
        "zone_ids": list(alert.zone_ids),
        "district": district,
        "message_zh": f"【{alert.severity.label_zh}】人员 {pid}：{zh}",
        "message_en": f"[{alert.severity.name}] worker {pid}: {en}",
    }


def retention_cutoff(now: pd.Timestamp, days: float = DEFAULT_RETENTION_DAYS) -> pd.Timestamp:
    """Personal rows older than this are deleted."""
    if days <= 0:
        raise ValueError("retention must be positive")
    return pd.Timestamp(now) - pd.Timedelta(days=days)


def expired(times: pd.Series, now: pd.Timestamp, days: float = DEFAULT_RETENTION_DAYS) -> pd.Series:
    """Boolean mask of personal rows past retention."""
    return pd.to_datetime(times, utc=True) < retention_cutoff(now, days)
