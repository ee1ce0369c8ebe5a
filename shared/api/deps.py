"""Dependencies of every router: the database, the caller and their role, rate limits, paging, time ranges.

Authentication is the notification service's: the same roster, the same scrypt password hashes and
the same signed tokens (`shared.notify.domain.auth`), plus API-only consumer accounts with the
read-only role `open_data`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

import yaml
from fastapi import Depends, Query, Request
from pydantic import BaseModel

from shared.api.problems import ApiError
from shared.notify.domain.auth import read_token
from shared.notify.domain.config import ConfigError, check_not_demo

RANK = {"field_staff": 0, "open_data": 1, "viewer": 2, "dispatcher": 3, "admin": 4}
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


class Account(BaseModel):
    id: str
    name: str
    roles: list[str]
    password_hash: str | None = None


def load_accounts(*paths, allow_demo: bool | None = None) -> dict[str, Account]:
    """People of the roster and API consumers, by id. A role the API does not know is an error; so is a
    file marked `demo: true` (the shipped ones, whose passwords are published) unless demo accounts are
    allowed (None: as CITYOPS_ALLOW_DEMO_ACCOUNTS says)."""
    out: dict[str, Account] = {}
    for path in paths:
        if path is None or not path.exists():
            continue
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping with `people:` at the top level")
        check_not_demo(path, data, allow_demo)
        for p in data.get("people", []):
            a = Account(**{k: p[k] for k in ("id", "name", "roles", "password_hash") if k in p})
            bad = [r for r in a.roles if r not in RANK]
            if bad:
                raise ValueError(f"{path}: {a.id} has unknown role(s) {bad}; use one of {sorted(RANK)}")
            out[a.id] = a
    return out


@dataclass(frozen=True)
class Caller:
    id: str
    role: str


def caller(request: Request) -> Caller:
    state = request.app.state
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
    claims = read_token(state.secret, token) if token else None
    if claims is None or claims.get("sub") not in state.accounts:
        raise ApiError(
            401,
            "not_logged_in",
            "log in first: POST /api/v1/token with username and password, then "
            "send 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # a token lives 12 h; an account demoted in the roster since must not keep the role it was issued with
    if claims.get("role") not in state.accounts[claims["sub"]].roles:
        raise ApiError(
            401,
            "role_withdrawn",
            f"this token's role {claims.get('role')!r} is no longer yours: log in again "
            "(POST /api/v1/token) for a token with your current role",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    c = Caller(claims["sub"], claims["role"])
    state.limiter.take(c.id)
    return c


def need(min_role: str):
    def dep(c: Annotated[Caller, Depends(caller)]) -> Caller:
        if c.role != "admin" and RANK.get(c.role, -1) < RANK[min_role]:
            raise ApiError(
                403,
                "forbidden",
                f"role {c.role!r} may not read this; it needs {min_role!r} or higher "
                "(ask the CityOps administrator for an account with that role)",
            )
        return c

    return dep


OpenData = Annotated[Caller, Depends(need("open_data"))]
Viewer = Annotated[Caller, Depends(need("viewer"))]
Admin = Annotated[Caller, Depends(need("admin"))]


class RateLimiter:
    """A token bucket per caller: `per_min` requests a minute, bursts up to that many."""

    def __init__(self, per_min: int):
        self.rate = per_min / 60.0
        self.capacity = float(per_min)
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> None:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self.buckets[key] = (tokens, now)
            raise ApiError(
                429,
                "rate_limited",
                f"more than {self.capacity:.0f} requests a minute: retry after "
                f"{wait:.1f} s, or page with larger `limit`",
                headers={"Retry-After": f"{wait:.0f}"},
            )
        self.buckets[key] = (tokens - 1.0, now)


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int

    def wrap(self, items: list) -> dict:
        return {
            "items": items,
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": self.offset + self.limit if len(items) == self.limit else None,
        }


def page(
    limit: Annotated[int, Query(ge=1, le=1000, description="rows per page")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="rows to skip (use next_offset)")] = 0,
) -> Page:
    return Page(limit, offset)


Paging = Annotated[Page, Depends(page)]


@dataclass(frozen=True)
class Range:
    start: datetime
    end: datetime


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def time_range(
    start: Annotated[
        datetime | None,
        Query(description="inclusive, ISO 8601 (default: end minus 24 h)", examples=["2026-11-27T00:00:00Z"]),
    ] = None,
    end: Annotated[
        datetime | None,
        Query(description="exclusive, ISO 8601 (default: now)", examples=["2026-11-28T00:00:00Z"]),
    ] = None,
) -> Range:
    try:
        e = _utc(end) if end else datetime.now(UTC)
        s = _utc(start) if start else e - timedelta(hours=24)
    except (OverflowError, ValueError) as exc:
        raise ApiError(
            400, "bad_time_range", f"cannot use that time ({exc}): send ISO 8601 with a zone"
        ) from None
    if not (EARLIEST <= s <= LATEST and EARLIEST <= e <= LATEST):
        raise ApiError(400, "bad_time_range", "start and end must lie between 1970 and 2200")
    if e <= s:
        raise ApiError(400, "bad_time_range", f"end ({e.isoformat()}) must be after start ({s.isoformat()})")
    return Range(s, e)


TimeRange = Annotated[Range, Depends(time_range)]

BUCKETS = {"5m": "5 minutes", "15m": "15 minutes", "1h": "1 hour", "6h": "6 hours", "1d": "1 day"}


def pool(request: Request):
    return request.app.state.pool
