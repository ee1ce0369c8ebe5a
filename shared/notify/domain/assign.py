"""Choosing who takes a field task: the nearest available qualified person, lighter workloads first."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Lifecycle of a field task. `rejected` is transient: the task is reassigned (or left open) at once.
TRANSITIONS: dict[str, set[str]] = {
    "open": {"assigned", "cancelled"},
    "assigned": {"accepted", "rejected", "cancelled", "assigned"},
    "accepted": {"on_site", "rejected", "cancelled"},
    "on_site": {"done", "cancelled"},
    "done": set(),
    "cancelled": set(),
}
ACTIVE = ("assigned", "accepted", "on_site")
# One extra active task weighs like this many kilometres of travel.
WORKLOAD_KM = 3.0


@dataclass(frozen=True)
class Candidate:
    person_id: str
    skills: frozenset[str]
    lat: float | None
    lon: float | None
    available: bool
    active_tasks: int
    max_tasks: int


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371.0088
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def rank(
    candidates: list[Candidate],
    *,
    lat: float,
    lon: float,
    required_skills: list[str],
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[tuple[str, float]]:
    """Qualified, available people with spare capacity, best first, with their score (km-equivalent)."""
    need = set(required_skills)
    out = []
    for c in candidates:
        if c.person_id in exclude or not c.available or c.active_tasks >= c.max_tasks or not need <= c.skills:
            continue
        dist = haversine_km(lat, lon, c.lat, c.lon) if c.lat is not None and c.lon is not None else 50.0
        out.append((c.person_id, dist + WORKLOAD_KM * c.active_tasks))
    out.sort(key=lambda x: (x[1], x[0]))
    return out


def can_move(current: str, new: str) -> bool:
    return new in TRANSITIONS.get(current, set())
