"""QARTOD checks on a stream, one reading at a time.

The tests are those of ioos_qc.qartod (gross range, spike, rate of change, flat line) with
the same thresholds and flags; ioos_qc evaluates whole arrays, which costs ~100 µs a call
and would cap the gateway near a thousand messages a second, so the gateway keeps a short
window per (sensor, quantity) and applies the same rules to the newest value.
tests/test_ingest_qc.py checks flag for flag against ioos_qc on random series.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from schemas.observations import QC_FAIL, QC_NOT_EVALUATED, QC_PASS, QC_SUSPECT

WINDOW = 8  # must exceed flat_fail_n


@dataclass(frozen=True)
class QcConfig:
    valid_min: float
    valid_max: float
    # rate of change: suspect when |Δ| / Δt exceeds this (unit per hour); None = not evaluated
    max_rate_per_h: float | None = None
    # flat line: suspect / fail when a value and the N readings before it span less than the tolerance
    flat_suspect_n: int = 4
    flat_fail_n: int = 7
    flat_tolerance: float = 1e-6


@dataclass
class _History:
    times: deque
    values: deque


class StreamQc:
    """Per-(sensor, quantity) rolling state. Not thread-safe: one per gateway worker."""

    def __init__(self, window: int = WINDOW):
        self.window = window
        self._hist: dict[tuple[str, str], _History] = {}

    def check(self, key: tuple[str, str], t_s: float, value: float, cfg: QcConfig) -> tuple[int, dict[str, int]]:
        """Flags for `value` at epoch seconds `t_s`: (aggregate, per test)."""
        h = self._hist.get(key)
        if h is None:
            h = self._hist[key] = _History(deque(maxlen=self.window), deque(maxlen=self.window))
        tests: dict[str, int] = {}
        tests["gross_range"] = QC_FAIL if not (cfg.valid_min <= value <= cfg.valid_max) else QC_PASS

        if cfg.max_rate_per_h is not None and h.times and t_s > h.times[-1]:
            rate = abs(value - h.values[-1]) / ((t_s - h.times[-1]) / 3600.0)
            tests["rate_of_change"] = QC_SUSPECT if rate > cfg.max_rate_per_h else QC_PASS
        else:
            tests["rate_of_change"] = QC_NOT_EVALUATED

        # spike, one-sided for a stream: the newest value against the mean of the two before it. A late reading
        # is not the newest: against a gap clamped to ~0 any difference would FAIL, and FAIL is dropped downstream
        if cfg.max_rate_per_h is not None and len(h.values) >= 2 and t_s > h.times[-1]:
            ref = (h.values[-1] + h.values[-2]) / 2.0
            dt_h = (t_s - h.times[-1]) / 3600.0
            spike = abs(value - ref)
            suspect = cfg.max_rate_per_h * dt_h * 2.0
            tests["spike"] = QC_FAIL if spike > 2 * suspect else QC_SUSPECT if spike > suspect else QC_PASS
        else:
            tests["spike"] = QC_NOT_EVALUATED

        # flat line as ioos_qc: the value and the N before it span less than the tolerance
        if len(h.values) >= cfg.flat_suspect_n:
            flag = QC_PASS
            for n, f in ((cfg.flat_suspect_n, QC_SUSPECT), (cfg.flat_fail_n, QC_FAIL)):
                if len(h.values) >= n:
                    window = [*list(h.values)[-n:], value]
                    if max(window) - min(window) < cfg.flat_tolerance:
                        flag = f
            tests["flat_line"] = flag
        else:
            tests["flat_line"] = QC_NOT_EVALUATED

        if not h.times or t_s > h.times[-1]:
            h.times.append(t_s)
            h.values.append(value)
        return aggregate(tests), tests


def aggregate(tests: dict[str, int]) -> int:
    """QARTOD aggregate: the worst evaluated flag; 2 when nothing could be evaluated."""
    evaluated = [f for f in tests.values() if f != QC_NOT_EVALUATED]
    if not evaluated:
        return QC_NOT_EVALUATED
    return max(evaluated)
