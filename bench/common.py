"""Helpers the benchmarks share: where the data is, how results are written."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def data_dir() -> Path:
    return Path(os.environ.get("CITYOPS_DATA_DIR", ROOT.parent / "shared" / "data"))


def write_results(name: str, results: dict, markdown: str) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}
    j = RESULTS / f"{name}.json"
    m = RESULTS / f"{name}.md"
    j.write_text(json.dumps({"meta": meta, **results}, indent=1, default=str, ensure_ascii=False))
    m.write_text(f"# Benchmark: {name}\n\n_{meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}_\n\n"
                 + markdown + "\n")
    return j, m
