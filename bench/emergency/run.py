"""Benchmark: equipment fault early warning on SKAB valve1 (issue 6).

Each valve1 experiment: the first 400 rows are normal operation (the benchmark's
convention), passed to the batch command as `--train-until` = the 400th row's time; the
rest is scored. `is_anomaly` is compared with the `anomaly` labels, all experiments
pooled: F1, false-alarm rate (share of normal rows flagged) and missed-alarm rate.
The PCA T²+Q baseline runs in the same process through the same batch code path.

An honesty check follows: the anomaly-free recording (2.6 h, no anomalies), trained on
its first 400 rows, where every flagged row is a false alarm.

    cd /work/main && .venv/bin/python -m bench.emergency.run
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from services.emergency import batch

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CITYOPS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
TRAIN_ROWS = 400
MODELS = {
    "pca": "PCA T²+Q (baseline)",
    "mset": "MSET state estimation + 3-of-5 persistence",
    "hybrid": "MSET or linear residuals (smaller score) + 3-of-5 persistence",
}


def _run_detect(series: Path, train_until: str, model: str, out: Path) -> pd.DataFrame:
    # The batch command's own progress lines would drown the table; keep them quiet here.
    with contextlib.redirect_stderr(io.StringIO()):
        batch.detect(str(series), train_until, str(out), model=model)
    got = pd.read_csv(out)
    got["time"] = pd.to_datetime(got["time"], utc=True)
    return got


def _metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y, p = y.astype(bool), p.astype(bool)
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    return {
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "far": fp / max(int((~y).sum()), 1),
        "mar": fn / max(int(y.sum()), 1),
        "rows": int(len(y)),
        "anomalous_rows": int(y.sum()),
    }


def main() -> int:
    valve = DATA / "skab" / "valve1"
    if not valve.is_dir():
        print(f"bench.emergency: SKAB data not found at {valve}; nothing to benchmark.")
        return 0
    files = sorted(valve.glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {m: ([], []) for m in MODELS}
    per_exp: dict[str, dict[str, dict[str, float]]] = {m: {} for m in MODELS}
    seconds = {m: 0.0 for m in MODELS}
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(files):
            raw = pd.read_csv(f)
            raw["time"] = pd.to_datetime(raw["time"], utc=True)
            t = raw["time"].iloc[TRAIN_ROWS - 1].isoformat()
            truth = raw.iloc[TRAIN_ROWS:][["time", "anomaly"]]
            for m in MODELS:
                t0 = time.perf_counter()
                got = _run_detect(f, t, m, Path(tmp) / f"{m}.csv")
                seconds[m] += time.perf_counter() - t0
                merged = truth.merge(got, on="time", how="left", validate="one_to_one")
                if merged["is_anomaly"].isna().any():
                    raise SystemExit(f"{f}: batch output is missing rows")
                y, p = merged["anomaly"].to_numpy(), merged["is_anomaly"].to_numpy()
                pooled[m][0].append(y)
                pooled[m][1].append(p)
                per_exp[m][f.stem] = _metrics(y, p)
            print(f"bench.emergency: {i + 1}/{len(files)} {f.name}", file=sys.stderr)

        free_far: dict[str, float] = {}
        free = DATA / "skab" / "anomaly-free" / "anomaly-free.csv"
        if free.exists():
            raw = pd.read_csv(free)
            t = pd.Timestamp(raw["time"].iloc[TRAIN_ROWS - 1]).isoformat()
            for m in MODELS:
                got = _run_detect(free, t, m, Path(tmp) / f"free-{m}.csv")
                free_far[m] = float(got["is_anomaly"].mean())

    results = {m: _metrics(np.concatenate(pooled[m][0]), np.concatenate(pooled[m][1])) for m in MODELS}
    base = results["pca"]
    ratios = {m: {k: (results[m][k] / base[k] if base[k] else None) for k in ("f1", "far", "mar")} for m in MODELS}
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    report = {
        "benchmark": "SKAB valve1, first 400 rows of each experiment for training, the rest scored, pooled",
        "date": today,
        "machine": f"{platform.node()} {platform.machine()} python {platform.python_version()}",
        "experiments": len(files),
        "target": {"f1_min": 0.80, "far_max": 0.15},
        "models": {m: {"label": MODELS[m], **results[m], "ratio_vs_baseline": ratios[m],
                       "seconds": round(seconds[m], 2), "per_experiment": per_exp[m]} for m in MODELS},
        "anomaly_free_far_train_400": free_far,
        "notes": [
            "The MSET settings (smoothing window 10 samples, 3-of-5 persistence, 99.5 % threshold "
            "quantile) and the rule that leaves lone drifting channels (here temperature and "
            "thermocouple) out of the test were chosen while looking at these same valve1 "
            "experiments, so these figures are optimistic; the leave-one-file-out section below "
            "(`bench/emergency/lofo.py`) gives the figures with nothing tuned on the scored file.",
            "The hybrid trades missed alarms for false ones on SKAB; it is the one that stays quiet "
            "when a pump runs at a load it never ran at in training (see the tests and the simulator).",
            "The anomaly-free recording shows the limit of 400 training rows: hours later the pump "
            "runs at another operating point and every model flags most rows.",
        ],
    }
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "emergency.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    lines = [
        f"# Emergency: equipment fault early warning — SKAB valve1 ({today})",
        "",
        f"{len(files)} experiments, first {TRAIN_ROWS} rows of each for training, the rest scored, pooled "
        f"({base['rows']} rows, {base['anomalous_rows']} anomalous). Target: F1 ≥ 0.80 with false-alarm rate ≤ 15 %.",
        "",
        "| model | F1 | false-alarm rate | missed-alarm rate | F1 / baseline | FAR / baseline | MAR / baseline | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in MODELS:
        r, q = results[m], ratios[m]
        lines.append(f"| {MODELS[m]} | {r['f1']:.3f} | {r['far']:.1%} | {r['mar']:.1%} | "
                     f"{q['f1']:.2f} | {q['far']:.2f} | {q['mar']:.2f} | {seconds[m]:.1f} |")
    if free_far:
        lines += ["", "Anomaly-free recording, trained on its first 400 rows (every flag is a false alarm): "
                  + ", ".join(f"{MODELS[m]} {v:.1%}" for m, v in free_far.items()) + "."]
    lines += ["", *[f"- {n}" for n in report["notes"]], ""]
    (out_dir / "emergency.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    # settings chosen without the scored file; appends its section to emergency.md
    from bench.emergency import lofo

    rc = lofo.main()
    if os.environ.get("CITYOPS_BENCH_SKIP_LATENCY"):
        return rc
    # the streaming service's wearable -> alert latency (needs the stack); appends its section to emergency.md
    from bench.emergency import latency

    return max(rc, latency.main([]))


if __name__ == "__main__":
    raise SystemExit(main())
