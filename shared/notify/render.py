"""Message texts in Chinese and English (jinja2 templates), chosen per recipient."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATES = Path(__file__).parent / "templates"
SEVERITY_ZH = {"info": "提示", "minor": "一般", "major": "重要", "critical": "紧急"}
PRIORITY_ZH = {"low": "低", "normal": "普通", "high": "高", "urgent": "紧急"}


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )


def _local(t: datetime | str | None, tz: ZoneInfo) -> str | None:
    if t is None:
        return None
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t.astimezone(tz).strftime("%Y-%m-%d %H:%M")


def alert_message(alert: dict, lang: str, *, tier: int, round: int, tz: ZoneInfo) -> dict:
    """{'subject', 'body'} of one alert notification; `alert` is the row of the alerts table."""
    text = (
        _env()
        .get_template(f"alert.{lang}.j2")
        .render(
            a=alert,
            tier=tier,
            round=round,
            severity_zh=SEVERITY_ZH[alert["severity"]],
            raised_local=_local(alert["raised_at"], tz),
        )
        .strip()
    )
    subject, _, body = text.partition("\n")
    return {"subject": subject, "body": body}


def task_message(task: dict, lang: str, *, tz: ZoneInfo, deadline: bool = False, shared: bool = False) -> dict:
    """{'subject', 'body'} of a task push; `shared`: for the city's common receiver, without the description and
    the position (a task about a person)."""
    t = dict(task, due_local=_local(task.get("due_at"), tz))
    text = (
        _env()
        .get_template(f"task.{lang}.j2")
        .render(
            t=t,
            deadline=deadline,
            shared=shared,
            priority_zh=PRIORITY_ZH.get(task["priority"], task["priority"]),
        )
        .strip()
    )
    subject, _, body = text.partition("\n")
    return {"subject": subject, "body": body}


def digest_message(messages: list[dict], lang: str) -> dict:
    """Several held notifications of one group as one message."""
    n = len(messages)
    if lang == "zh":
        subject = f"【汇总】{n} 条相关告警：{messages[0]['subject']}"
    else:
        subject = f"[DIGEST] {n} related alerts: {messages[0]['subject']}"
    body = "\n\n".join(f"{i + 1}. {m['subject']}\n{m['body']}" for i, m in enumerate(messages))
    return {"subject": subject, "body": body}
