"""Personal data (数据安全, 隐私保护): pseudonymous worker ids, shared views, retention.

Worker positions and health readings stay on restricted topics and tables. Anything on
a shared topic carries a keyed pseudonym instead of the worker id: HMAC-SHA256 with a
secret key, so the same worker gets the same pseudonym (alerts can be followed), but the
id cannot be recovered or guessed by hashing candidate ids without the key.
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


def shared_alert(alert: SafetyAlert, key: bytes, district: str | None) -> dict[str, Any]:
    """What a shared topic may carry about a worker alert: pseudonym, kind, grade, zone, district.

    No position, no health value and no worker id: the message text is rebuilt around the
    pseudonym. Dispatchers with access to the restricted topic see the full alert.
    """
    pid = pseudonymise(alert.worker_id, key)
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
