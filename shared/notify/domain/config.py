"""The routing file and the roster file: pydantic models, loaded from YAML and checked as a whole.

Errors name the file, the place in it and what to write instead, so a bad edit fails at start,
not at 3 a.m. when the first alert arrives.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

Severity = Literal["info", "minor", "major", "critical"]
Domain = Literal["air", "water", "weather", "emergency", "platform"]
ChannelName = Literal["webhook", "email", "mqtt", "kafka", "sms"]
Role = Literal["viewer", "dispatcher", "field_staff", "admin"]
SEVERITY_RANK = {"info": 0, "minor": 1, "major": 2, "critical": 3}
_HHMM = re.compile(r"^([01]\d|2[0-4]):[0-5]\d$")


class ConfigError(ValueError):
    """A routing or roster file is wrong; the message says where and how to fix it."""


DEMO_FLAG = "CITYOPS_ALLOW_DEMO_ACCOUNTS"


def _is_one(value: Any) -> bool:
    return value is True or str(value).strip() == "1"


# `CITYOPS_ALLOW_DEMO_ACCOUNTS`: only "1" lets a file marked `demo: true` be loaded
DemoFlag = Annotated[bool, BeforeValidator(_is_one)]


def demo_accounts_allowed() -> bool:
    """CITYOPS_ALLOW_DEMO_ACCOUNTS=1 in the environment or, like every setting, in the local stack's
    settings file (`cityops stack up` writes it there: the local stack is a demo and test stack)."""
    if DEMO_FLAG in os.environ:
        return _is_one(os.environ[DEMO_FLAG])
    from dotenv import dotenv_values

    from shared.settings import stack_env_file

    path = stack_env_file()
    return path.is_file() and _is_one(dotenv_values(path).get(DEMO_FLAG))


def demo_refusal(path: Path) -> str:
    """The one line a service stops with when asked to load a demo accounts file without the flag."""
    return (
        f"{path}: this file holds the demo accounts, whose passwords are published (demo-<id>, one admin); "
        "give your own roster (CITYOPS_NOTIFY_ROSTER / CITYOPS_API_ROSTER / CITYOPS_API_CONSUMERS, "
        "password hashes from `cityops notify hash-password`), or for a demo or test set "
        f"{DEMO_FLAG}=1"
    )


def check_not_demo(path: Path, data: dict, allow_demo: bool | None = None) -> None:
    """Refuse an accounts file marked `demo: true` unless demo accounts are allowed (None: ask the
    environment)."""
    if data.get("demo") is True and not (demo_accounts_allowed() if allow_demo is None else allow_demo):
        raise ConfigError(demo_refusal(path))


def _parse_hhmm(s: str) -> time:
    if not _HHMM.match(s):
        raise ValueError(f"{s!r} is not a time of day: write HH:MM, e.g. '22:00'")
    h, m = (int(x) for x in s.split(":"))
    return time(23, 59, 59) if h == 24 else time(h, m)


def in_window(t: time, start: time, end: time) -> bool:
    """Is t within [start, end)? A window that wraps midnight (22:00-07:00) is handled."""
    if start <= end:
        return start <= t < end
    return t >= start or t < end


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{1,62}$")
    name: str
    language: Literal["zh", "en"] = "zh"
    roles: list[Role] = Field(min_length=1)
    email: str | None = None
    phone: str | None = None
    webhook_url: str | None = None
    skills: list[str] = Field(default_factory=list)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    district: str | None = None
    available: bool = True
    max_tasks: int = Field(default=3, ge=0)
    password_hash: str | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[^@\s]+@[^@\s]+$", v):
            raise ValueError(f"{v!r} is not an e-mail address")
        return v


class Rota(BaseModel):
    """On-call rota: `members` take turns, one `shift_hours` block each, counted from `start`."""

    model_config = ConfigDict(extra="forbid")
    members: list[str] = Field(min_length=1)
    shift_hours: int = Field(default=168, ge=1)
    start: datetime = datetime(2026, 1, 5, 8, 0)

    def on_call(self, at: datetime, tz: ZoneInfo) -> str:
        start = self.start if self.start.tzinfo else self.start.replace(tzinfo=tz)
        shifts = int((at - start).total_seconds() // (self.shift_hours * 3600))
        return self.members[shifts % len(self.members)]


class Roster(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # the shipped demo roster says so: it is refused unless CITYOPS_ALLOW_DEMO_ACCOUNTS=1
    demo: bool = False
    people: list[Person] = Field(min_length=1)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    rotas: dict[str, Rota] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _refs(self) -> Roster:
        ids = [p.id for p in self.people]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"people listed twice: {sorted(dup)}; each person id must be unique")
        known = set(ids)
        for g, members in self.groups.items():
            for m in members:
                if m not in known:
                    raise ValueError(f"group {g!r} lists {m!r}, who is not in people: add them or fix the id")
        for r, rota in self.rotas.items():
            for m in rota.members:
                if m not in known:
                    raise ValueError(f"rota {r!r} lists {m!r}, who is not in people: add them or fix the id")
        return self

    @property
    def by_id(self) -> dict[str, Person]:
        return {p.id: p for p in self.people}


class Match(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domains: list[Domain] | None = None
    min_severity: Severity = "info"
    kinds: list[str] | None = None
    districts: list[str] | None = None
    hours: str | None = Field(default=None, description="local time window HH:MM-HH:MM, may wrap midnight")

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: str | None) -> str | None:
        if v is not None:
            parts = v.split("-")
            if len(parts) != 2:
                raise ValueError(f"hours {v!r}: write 'HH:MM-HH:MM', e.g. '08:00-18:00'")
            _parse_hhmm(parts[0]), _parse_hhmm(parts[1])
        return v


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipients: list[str] = Field(min_length=1, description="person ids, group:<name> or rota:<name>")
    channels: list[ChannelName] = Field(min_length=1)
    ack_timeout_s: float = Field(default=300, gt=0, description="escalate to the next tier after this long")


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    match: Match = Field(default_factory=Match)
    tiers: list[Tier] = Field(min_length=1)
    repeat_until_ack: bool = True
    stop: bool = True


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = "22:00"
    end: str = "07:00"
    severities: list[Severity] = Field(default_factory=lambda: list[Severity](["info", "minor"]))

    @field_validator("start", "end")
    @classmethod
    def _t(cls, v: str) -> str:
        _parse_hhmm(v)
        return v


class TaskRouting(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[ChannelName] = Field(
        default_factory=lambda: list[ChannelName](["mqtt", "email", "webhook"])
    )
    unassigned_to: list[str] = Field(default_factory=list, description="who hears of a task nobody can take")
    deadline_escalate_to: list[str] = Field(default_factory=list)
    deadline_channels: list[ChannelName] = Field(
        default_factory=lambda: list[ChannelName](["webhook", "email"])
    )


class Routing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = "Asia/Shanghai"
    dedup_window_s: float = Field(default=900, ge=0)
    group_window_s: float = Field(
        default=60, ge=0, description="later alerts of one group go out as one digest"
    )
    rate_limit_per_minute: int = Field(
        default=30, ge=1, description="per recipient and channel; critical exempt"
    )
    quiet_hours: QuietHours | None = None
    max_attempts: int = Field(default=5, ge=1)
    retry_backoff_s: float = Field(default=2.0, gt=0)
    rules: list[Rule] = Field(min_length=1)
    tasks: TaskRouting = Field(default_factory=TaskRouting)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as 'Asia/Shanghai'") from None
        return v

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _fmt_errors(path: Path, exc: ValidationError) -> str:
    lines = [f"{path}: {exc.error_count()} problem(s):"]
    for e in exc.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?); remove it or check the documented keys"
        elif e["type"] == "literal_error":
            msg = f"{msg}; got {e.get('input')!r}"
        lines.append(f"  - at {where}: {msg}")
    return "\n".join(lines)


def _load_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(
            f"{path}: file not found; set CITYOPS_NOTIFY_ROUTING / CITYOPS_NOTIFY_ROSTER or create it"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_roster(path: Path, *, allow_demo: bool | None = None) -> Roster:
    """The roster; a file marked `demo: true` only with demo accounts allowed (None: as the environment
    says, see `demo_accounts_allowed`)."""
    data = _load_yaml(path)
    check_not_demo(path, data, allow_demo)
    try:
        return Roster.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_fmt_errors(path, exc)) from None


def load_routing(path: Path, roster: Roster) -> Routing:
    """Parse the routing file and check every recipient it names exists in the roster."""
    try:
        routing = Routing.model_validate(_load_yaml(path))
    except ValidationError as exc:
        raise ConfigError(_fmt_errors(path, exc)) from None
    problems = []
    for i, rule in enumerate(routing.rules):
        for j, tier in enumerate(rule.tiers):
            for r in tier.recipients:
                if (err := recipient_error(r, roster)) is not None:
                    problems.append(f"  - at rules.{i}.tiers.{j}.recipients ({rule.name}): {err}")
    for key in ("unassigned_to", "deadline_escalate_to"):
        for r in getattr(routing.tasks, key):
            if (err := recipient_error(r, roster)) is not None:
                problems.append(f"  - at tasks.{key}: {err}")
    names = [r.name for r in routing.rules]
    for n in {n for n in names if names.count(n) > 1}:
        problems.append(
            f"  - rule name {n!r} is used twice; rule names must be unique (escalations refer to them)"
        )
    if problems:
        raise ConfigError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(problems))
    return routing


def recipient_error(ref: str, roster: Roster) -> str | None:
    if ref.startswith("group:"):
        return (
            None
            if ref[6:] in roster.groups
            else f"no group {ref[6:]!r} in the roster (groups: {sorted(roster.groups)})"
        )
    if ref.startswith("rota:"):
        return (
            None
            if ref[5:] in roster.rotas
            else f"no rota {ref[5:]!r} in the roster (rotas: {sorted(roster.rotas)})"
        )
    return (
        None
        if ref in roster.by_id
        else f"no person {ref!r} in the roster; use a person id, group:<name> or rota:<name>"
    )


def expand(refs: list[str], roster: Roster, at: datetime, tz: ZoneInfo) -> list[str]:
    """Person ids behind recipient references, in order, each once."""
    out: list[str] = []
    for ref in refs:
        if ref.startswith("group:"):
            ids = roster.groups[ref[6:]]
        elif ref.startswith("rota:"):
            ids = [roster.rotas[ref[5:]].on_call(at, tz)]
        else:
            ids = [ref]
        out += [i for i in ids if i not in out]
    return out


def match_rule(
    routing: Routing, *, domain: str, kind: str, severity: str, district: str | None, at: datetime
) -> Rule | None:
    """The first rule whose match holds for this alert at this time."""
    local = at.astimezone(routing.tz).time()
    for rule in routing.rules:
        m = rule.match
        if m.domains is not None and domain not in m.domains:
            continue
        if SEVERITY_RANK[severity] < SEVERITY_RANK[m.min_severity]:
            continue
        if m.kinds is not None and kind not in m.kinds:
            continue
        if m.districts is not None and district not in m.districts:
            continue
        if m.hours is not None:
            a, b = m.hours.split("-")
            if not in_window(local, _parse_hhmm(a), _parse_hhmm(b)):
                continue
        return rule
    return None


def quiet_until(routing: Routing, severity: str, at: datetime) -> datetime | None:
    """When a low-severity notification held by quiet hours may go out, or None if it may go now."""
    q = routing.quiet_hours
    if q is None or severity not in q.severities:
        return None
    local = at.astimezone(routing.tz)
    start, end = _parse_hhmm(q.start), _parse_hhmm(q.end)
    if not in_window(local.time(), start, end):
        return None
    release = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if release <= local:
        from datetime import timedelta

        release += timedelta(days=1)
    return release
