"""Unit normalisation: every quantity is stored in one canonical unit (see the sensor registry)."""

from __future__ import annotations

from collections.abc import Callable

# (from, to) -> conversion
_CONVERSIONS: dict[tuple[str, str], Callable[[float], float]] = {
    ("degF", "degC"): lambda v: (v - 32.0) * 5.0 / 9.0,
    ("K", "degC"): lambda v: v - 273.15,
    ("mg/m3", "ug/m3"): lambda v: v * 1000.0,
    ("ug/m3", "mg/m3"): lambda v: v / 1000.0,
    ("Pa", "hPa"): lambda v: v / 100.0,
    ("kPa", "hPa"): lambda v: v * 10.0,
    ("mbar", "hPa"): lambda v: v,
    ("kPa", "m"): lambda v: v / 9.80665,  # pressure head of water
    ("bar", "m"): lambda v: v * 100.0 / 9.80665,
    ("psi", "m"): lambda v: v * 6.894757 / 9.80665,
    ("L/s", "m3/h"): lambda v: v * 3.6,
    ("m3/s", "m3/h"): lambda v: v * 3600.0,
    ("cm", "m"): lambda v: v / 100.0,
    ("mm", "m"): lambda v: v / 1000.0,
    ("in", "mm"): lambda v: v * 25.4,
    ("km/h", "m/s"): lambda v: v / 3.6,
    ("kn", "m/s"): lambda v: v * 0.514444,
    ("%", "fraction"): lambda v: v / 100.0,
}


class UnitError(ValueError):
    pass


def convert(value: float, unit: str, canonical: str, accepts: list[str] | None = None) -> float:
    """Convert `value` in `unit` to `canonical`; `accepts` limits what the sensor may send."""
    if unit == canonical:
        return value
    if accepts is not None and unit not in accepts:
        raise UnitError(f"unit {unit!r} not accepted for this quantity (canonical {canonical!r}, accepts {accepts})")
    fn = _CONVERSIONS.get((unit, canonical))
    if fn is None:
        raise UnitError(f"no conversion from {unit!r} to {canonical!r}")
    return fn(value)
