"""Benchmark: SKAB valve1 with the detector's settings chosen leave-one-file-out (no tuning on the test file).

`bench.emergency.run` scores valve1 with the detector's default settings, and those defaults were
picked while looking at the same 16 experiments, so its figures are optimistic. Here each
experiment is scored with settings chosen on the other 15 only:

1. every file: first 400 rows to fit, the rest scored (the benchmark's convention), for every
   model configuration of a small grid (smoothing window, whether lone drifting channels are
   left out) — the raw scores, threshold 1.0 = the training-quantile limit;
2. for held-out file i: over the other files pooled, pick the configuration, threshold factor and
   k-of-5 persistence with the best F1 among those with false-alarm rate ≤ 15 % (none: the lowest
   false-alarm rate); score file i with it;
3. pool the held-out flags of all 16 files: F1, false-alarm rate, missed-alarm rate.

The PCA T²+Q baseline goes through the same selection (threshold factor and persistence), and its
textbook form (threshold 1, no persistence) is reported too, all in the same run.

    cd /work/main && nice .venv/bin/python -m bench.emergency.lofo
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from services.emergency.batch import read_series
from services.emergency.domain.fault import fit_detector, persistence

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("CITYOPS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
TRAIN_ROWS = 400
FAR_MAX = 0.15
PERSIST_N = 5
# wide enough that no model's choice sits at an edge (PCA's limits are far too tight for SKAB)
THRESHOLDS = (0.6, 0.8, 1.0, 1.25, 1.6, 2.0, 2.5, 3.2, 4.0, 5.0, 6.4, 8.0, 10.0, 13.0, 16.0, 20.0)
PERSIST_K = (1, 2, 3, 4, 5)
# model -> list of (label, fit_detector keyword arguments)
CONFIGS: dict[str, list[tuple[str, dict]]] = {
    "pca": [("explained 0.90", {})],
    "mset": [(f"window {w}, {'drifting channels out' if s < 1 else 'all channels'}", {"window": w, "slow_share": s})
             for w in (5, 10, 20, 40) for s in (0.65, 1.0)],
    "hybrid": [(f"window {w}, {'drifting channels out' if s < 1 else 'all channels'}", {"window": w, "slow_share": s})
               for w in (5, 10, 20, 40) for s in (0.65, 1.0)],
}
LABELS = {"pca": "PCA T²+Q (baseline)", "mset": "MSET state estimation", "hybrid": "MSET or linear residuals"}


def _counts(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """tp, fp, fn, normal rows."""
    return np.array([(y & p).sum(), (~y & p).sum(), (y & ~p).sum(), (~y).sum()], dtype=float)


def _metrics(c: np.ndarray) -> dict[str, float]:
    tp, fp, fn, neg = c
    return {"f1": 2 * tp / max(2 * tp + fp + fn, 1), "far": fp / max(neg, 1), "mar": fn / max(tp + fn, 1)}


def _choose(counts: np.ndarray) -> int:
    """Index of the best combination on pooled counts (combos x 4): best F1 with FAR <= FAR_MAX, else lowest FAR."""
    tp, fp, fn, neg = counts.T
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    far = fp / np.maximum(neg, 1)
    ok = far <= FAR_MAX
    if ok.any():
        return int(np.argmax(np.where(ok, f1, -1.0)))
    return int(np.argmin(far))


def main() -> int:
    valve = DATA / "skab" / "valve1"
    if not valve.is_dir():
        print(f"bench.emergency.lofo: SKAB data not found at {valve}; nothing to benchmark.")
        return 0
    files = sorted(valve.glob("*.csv"), key=lambda p: int(p.stem) if p.stem.isdigit() else p.stem)
    truth: list[np.ndarray] = []
    # model -> [file][config] raw score arrays
    raw: dict[str, list[list[np.ndarray]]] = {m: [] for m in CONFIGS}
    seconds = dict.fromkeys(CONFIGS, 0.0)
    for i, f in enumerate(files):
        df, channels = read_series(str(f))
        train, test = df.iloc[:TRAIN_ROWS], df.iloc[TRAIN_ROWS:]
        truth.append(pd.to_numeric(test["anomaly"]).to_numpy() > 0.5)
        for m, configs in CONFIGS.items():
            per_cfg = []
            for _, kw in configs:
                t0 = time.perf_counter()
                det = fit_detector(train[channels], model=m, **kw)  # type: ignore[arg-type]
                per_cfg.append(det.score(test[channels]).score)
                seconds[m] += time.perf_counter() - t0
            raw[m].append(per_cfg)
        print(f"bench.emergency.lofo: {i + 1}/{len(files)} {f.name}", file=sys.stderr)

    combos = {m: list(itertools.product(range(len(CONFIGS[m])), THRESHOLDS, PERSIST_K)) for m in CONFIGS}

    def flags(m: str, fi: int, combo: tuple[int, float, int]) -> np.ndarray:
        cfg, thr, k = combo
        return persistence(raw[m][fi][cfg] >= thr, k, PERSIST_N)

    results: dict[str, dict] = {}
    for m in CONFIGS:
        # counts[file, combo] = tp, fp, fn, neg
        counts = np.array([[_counts(truth[fi], flags(m, fi, c)) for c in combos[m]] for fi in range(len(files))])
        held = np.zeros(4)
        chosen = []
        per_file = {}
        for fi, f in enumerate(files):
            ci = _choose(counts[np.arange(len(files)) != fi].sum(axis=0))
            held += counts[fi, ci]
            cfg, thr, k = combos[m][ci]
            chosen.append(f"{CONFIGS[m][cfg][0]}, threshold ×{thr:g}, {k}-of-{PERSIST_N}")
            per_file[f.stem] = {**_metrics(counts[fi, ci]), "chosen": chosen[-1]}
        all_ci = _choose(counts.sum(axis=0))
        cfg, thr, k = combos[m][all_ci]
        results[m] = {
            "label": LABELS[m], "lofo": _metrics(held),
            "chosen_on_all_16": {"settings": f"{CONFIGS[m][cfg][0]}, threshold ×{thr:g}, {k}-of-{PERSIST_N}",
                                 **_metrics(counts[:, all_ci].sum(axis=0))},
            "choices": dict(Counter(chosen).most_common()), "per_file": per_file,
            "fit_and_score_seconds": round(seconds[m], 1),
        }
    # the textbook baseline: PCA at its own limit, no persistence
    textbook = sum((_counts(truth[fi], raw["pca"][fi][0] >= 1.0) for fi in range(len(files))), np.zeros(4))
    results["pca"]["textbook"] = _metrics(textbook)
    # the detector's shipped defaults (window 10, drifting channels out, threshold 1, 3-of-5), chosen on these files
    defaults = sum((_counts(truth[fi], persistence(raw["mset"][fi][2] >= 1.0, 3, PERSIST_N))
                    for fi in range(len(files))), np.zeros(4))
    results["mset"]["shipped_defaults_in_sample"] = _metrics(defaults)

    base = results["pca"]["lofo"]
    report = {
        "benchmark": "SKAB valve1, first 400 rows of each experiment to fit, the rest scored; settings chosen "
                     "leave-one-file-out (best F1 with FAR <= 15 % on the other 15 files), held-out flags pooled",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "experiments": len(files),
        "rows": int(sum(len(y) for y in truth)), "anomalous_rows": int(sum(y.sum() for y in truth)),
        "grid": {"thresholds": THRESHOLDS, "persist_k_of_5": PERSIST_K,
                 "configs": {m: [c[0] for c in v] for m, v in CONFIGS.items()}},
        "target": {"f1_min": 0.80, "far_max": FAR_MAX},
        "models": results,
        "ratio_vs_baseline_lofo": {m: {k: (results[m]["lofo"][k] / base[k] if base[k] else None)
                                       for k in ("f1", "far", "mar")} for m in results},
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "emergency-lofo.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    section = _markdown(report)
    md = out / "emergency.md"
    text = md.read_text(encoding="utf-8") if md.exists() else "# Emergency\n"
    start, end = "<!-- lofo:start -->", "<!-- lofo:end -->"
    if start in text:
        text = text[:text.index(start)] + text[text.index(end) + len(end):].lstrip("\n")
    md.write_text(text.rstrip("\n") + "\n\n" + start + "\n" + section + end + "\n", encoding="utf-8")
    print(section)
    best = results["mset"]["lofo"]
    return 0 if best["f1"] >= 0.80 and best["far"] <= FAR_MAX else 1


def _markdown(r: dict) -> str:
    ms = r["models"]
    lines = [
        f"## Settings chosen leave-one-file-out ({r['date']}, `bench/emergency/lofo.py`)",
        "",
        f"Each of the {r['experiments']} valve1 experiments scored with the settings (model configuration, threshold "
        "factor, k-of-5 persistence) that did best on the other 15 — best F1 with false-alarm rate ≤ 15 % — then "
        f"the held-out flags pooled ({r['rows']} rows, {r['anomalous_rows']} anomalous). Nothing is tuned on the "
        "file it is scored on. The baseline goes through the same selection.",
        "",
        "| model | F1 | false-alarm rate | missed-alarm rate | F1 / baseline | FAR / baseline | MAR / baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, x in ms.items():
        q = r["ratio_vs_baseline_lofo"][m]
        lo = x["lofo"]
        lines.append(f"| {x['label']}, held out | {lo['f1']:.3f} | {lo['far']:.1%} | {lo['mar']:.1%} | "
                     f"{q['f1']:.2f} | {q['far']:.2f} | {q['mar']:.2f} |")
    tb = ms["pca"]["textbook"]
    lines.append(f"| PCA T²+Q textbook (limit 1, no persistence) | {tb['f1']:.3f} | {tb['far']:.1%} | {tb['mar']:.1%} "
                 "| | | |")
    sd = ms["mset"]["shipped_defaults_in_sample"]
    lines.append(f"| MSET shipped defaults (chosen on these files: optimistic) | {sd['f1']:.3f} | {sd['far']:.1%} | "
                 f"{sd['mar']:.1%} | | | |")
    lines += ["", "Settings the folds chose (how stable the choice is):", ""]
    for x in ms.values():
        top = "; ".join(f"{k} ×{v}" for k, v in list(x["choices"].items())[:3])
        lines.append(f"- {x['label']}: {top}. On all 16: {x['chosen_on_all_16']['settings']}.")
    lines += [
        "",
        "What this does and does not remove: the threshold, persistence and smoothing window are no longer tuned "
        "on the scored file. The candidates themselves (the grid, and the rule that leaves lone drifting channels "
        "out of the test) were designed by people who had seen these experiments, and /work/shared/data holds "
        "no other SKAB recording to check them on; a chosen setting at the edge of the grid (the MSET window) also says the grid "
        "was not designed blind. The service and `cityops emergency detect` keep their defaults (window 10, "
        "threshold 1, 3-of-5); the settings chosen on all 16 are a candidate, not yet shipped.",
    ]
    lo = ms["mset"]["lofo"]
    met = lo["f1"] >= r["target"]["f1_min"] and lo["far"] <= r["target"]["far_max"]
    lines += ["", f"Target F1 ≥ {r['target']['f1_min']:.2f} at false-alarm rate ≤ {r['target']['far_max']:.0%} with "
              f"held-out settings: **{'met' if met else 'NOT met'}** (MSET F1 {lo['f1']:.3f}, FAR {lo['far']:.1%}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
