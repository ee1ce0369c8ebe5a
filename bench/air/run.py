"""Air-quality benchmark: `python -m bench.air.run` (issue 3, "Evaluation and benchmarks").

1. Leave-one-station-out on the Beijing data: `air estimate` (the same domain function the
   batch command calls) against IDW (power 2) over every hour, and against ordinary kriging
   on a documented subsample of hours (every KRIGE_EVERY-th hour: per-hour variogram fits).
2. Forecast at +1/+6/+24 h against persistence: fit up to TRAIN_UNTIL, score after it.
3. Source attribution on simulated plume episodes against a naive upwind/distance ranking.
4. Speed: one LOSO fold, one 2,500-cell grid update from 300 sensors; peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from services.air_quality.domain import episodes, grid, kriging
from services.air_quality.domain.attribution import attribute_observations
from services.air_quality.domain.forecast import forecast_stations
from services.air_quality.domain.spatial import build_network, estimate_at
from shared.city import default_city

DATA = Path(os.environ.get("CITYOPS_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))
OBS = DATA / "beijing_air" / "observations_2013-2015.csv.gz"
RESULTS = Path(__file__).resolve().parents[1] / "results"
TRAIN_UNTIL = pd.Timestamp("2014-09-01T00:00:00Z")
KRIGE_EVERY = 24
N_EPISODES = int(os.environ.get("AIR_BENCH_EPISODES", "24"))


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scores(est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(est) & np.isfinite(truth)
    e = est[ok] - truth[ok]
    return {"rmse": float(np.sqrt(np.mean(e**2))), "mae": float(np.mean(np.abs(e))),
            "r2": float(1 - np.sum(e**2) / np.sum((truth[ok] - truth[ok].mean()) ** 2)), "n": int(ok.sum())}


def loso(obs: pd.DataFrame) -> dict:
    stations = sorted(obs["station_id"].unique())
    est_all, idw_all, truth_all, sub_mask = [], [], [], []
    ok_all, ok_idw, ok_truth = [], [], []
    fold_seconds, answered = [], True
    for k, s in enumerate(stations):
        t0 = time.perf_counter()
        train = obs[obs["station_id"] != s]
        here = obs[obs["station_id"] == s]
        target = pd.DataFrame({"target_id": [s], "lat": [here["lat"].median()], "lon": [here["lon"].median()]})
        out = estimate_at(train, target, "pm25")
        fold_seconds.append(time.perf_counter() - t0)
        answered &= bool(out["pm25"].notna().all() and len(out) == train["time"].nunique())
        net = build_network(train, "pm25")
        truth = here.set_index("time")["pm25"].reindex(net.times).to_numpy()
        tx, ty = net.xy(target["lat"].to_numpy(), target["lon"].to_numpy())
        w = 1.0 / np.maximum(np.hypot(net.x_m - tx[0], net.y_m - ty[0]), 1.0) ** 2
        wm = np.where(np.isfinite(net.values), w, 0.0)
        with np.errstate(invalid="ignore"):
            idw_v = (np.nan_to_num(net.values) * wm).sum(axis=1) / wm.sum(axis=1)
        est = out["pm25"].to_numpy()
        est_all.append(est), idw_all.append(idw_v), truth_all.append(truth)
        # ordinary kriging, per-hour variogram, on every KRIGE_EVERY-th hour
        idx = np.arange(0, len(net.times), KRIGE_EVERY)
        ok_v = np.array([kriging.ordinary_kriging(net.x_m, net.y_m, net.values[t], tx, ty)[0][0] for t in idx])
        ok_all.append(ok_v), ok_idw.append(idw_v[idx]), ok_truth.append(truth[idx])
        sub_mask.append(est[idx])
        e = scores(est, truth)["rmse"] / scores(idw_v, truth)["rmse"]
        log(f"LOSO {k + 1}/{len(stations)} {s}: {fold_seconds[-1]:.0f} s, RMSE ratio vs IDW {e:.3f}")
    cat = np.concatenate
    full = {"air_estimate": scores(cat(est_all), cat(truth_all)), "idw_p2": scores(cat(idw_all), cat(truth_all))}
    sub = {"air_estimate": scores(cat(sub_mask), cat(ok_truth)), "idw_p2": scores(cat(ok_idw), cat(ok_truth)),
           "ordinary_kriging": scores(cat(ok_all), cat(ok_truth))}
    per_station = {s: scores(e, t)["rmse"] / scores(i, t)["rmse"]
                   for s, e, i, t in zip(stations, est_all, idw_all, truth_all, strict=True)}
    return {"all_hours": full, f"kriging_subsample_every_{KRIGE_EVERY}h": sub,
            "rmse_ratio_vs_idw": full["air_estimate"]["rmse"] / full["idw_p2"]["rmse"],
            "rmse_ratio_vs_ok_subsample": sub["air_estimate"]["rmse"] / sub["ordinary_kriging"]["rmse"],
            "per_station_ratio_vs_idw": per_station, "every_hour_and_target_answered": answered,
            "fold_seconds": fold_seconds}


def forecast_eval(obs: pd.DataFrame) -> dict:
    t0 = time.perf_counter()
    out = forecast_stations(obs, [1, 6, 24], TRAIN_UNTIL, "pm25")
    secs = time.perf_counter() - t0
    truth = obs.set_index(["time", "station_id"])["pm25"]
    now = truth.groupby(level="station_id").ffill()
    res = {"train_until": TRAIN_UNTIL.isoformat(), "seconds": secs,
           "blend_weight_xgboost": {f"+{h}h": w for h, w in out.attrs.get("blend_weight_xgboost", {}).items()}}
    for h in (1, 6, 24):
        o = out[out["horizon_h"] == h]
        tgt = truth.reindex(list(zip(o["issue_time"] + pd.Timedelta(hours=h), o["station_id"], strict=True))).to_numpy()
        pers = now.reindex(list(zip(o["issue_time"], o["station_id"], strict=True))).to_numpy()
        ok = np.isfinite(tgt) & np.isfinite(pers)
        m = scores(o["pm25"].to_numpy()[ok], tgt[ok])
        p = scores(pers[ok], tgt[ok])
        # reference, not a model: the best straight line from the value at issue time, fitted on the scored
        # period itself (it sees the future); what the value at issue time can say about the value h ahead
        a, b = np.polyfit(pers[ok], tgt[ok], 1)
        oracle = scores(a * pers[ok] + b, tgt[ok])
        res[f"+{h}h"] = {"model": m, "persistence": p, "rmse_ratio": m["rmse"] / p["rmse"],
                         "oracle_line_rmse_ratio": oracle["rmse"] / p["rmse"]}
    return res


# seeds 1000+ are the episodes the attribution was tuned on over several sessions; 2000+ were never
# looked at while tuning, so they say what to expect of a new city
SEED_SETS = {"tuned": 1000, "held_out": 2000}
# what is scored: the batch command (±48 h around each exceedance), the live service (past only),
# and the method before the one-stack-per-park fit (past only, every source free), for comparison
MODES = {"batch": {"look_ahead": True}, "live": {}, "live_before_2026_11_28": {"cluster_m": 0.0}}


def _ranked(res) -> tuple[dict, dict]:
    ranked, est = {}, {}
    for r in sorted(res, key=lambda r: r.rank):
        ranked.setdefault((r.time, r.station_id), []).append(r.source_id)
        if r.rank == 1:
            est[(r.time, r.station_id)] = r.contribution
    return ranked, est


def attribution_eval(n: int) -> dict:
    out: dict = {"episodes": n, "candidates_per_episode": 40}
    t0 = time.perf_counter()
    for set_name, seed0 in SEED_SETS.items():
        keys = ["top1", "top3", "top1_park"]
        tot = {m: dict.fromkeys(keys, 0.0) for m in [*MODES, "naive", "oracle_active", "oracle_parks"]}
        errs: dict[str, list[float]] = {m: [] for m in MODES}
        n_ex = 0
        for seed in range(n):
            ep = episodes.simulate_episode(seed0 + seed, hours=48)
            scored = {}
            for mode, kw in MODES.items():
                ranked, est = _ranked(attribute_observations(ep.obs, ep.sources, "pm25", 75.0, **kw))
                scored[mode] = episodes.score_attribution(ep, ranked, est)
                if scored[mode]["n"]:
                    errs[mode].append(scored[mode]["rel_err_contribution"])
            scored["naive"] = episodes.score_attribution(ep, episodes.naive_ranked(ep))
            # diagnosis, not a method: the batch fit told which 2-3 of the 40 sources are on (the truth's)
            on = ep.sources[ep.contributions.sum(axis=(0, 1)) > 0]
            oracle, _ = _ranked(attribute_observations(ep.obs, on, "pm25", 75.0, look_ahead=True))
            scored["oracle_active"] = episodes.score_attribution(ep, oracle)
            # diagnosis: told the active sources, but of an active park's stack only the park (all its stacks
            # are candidates): what choosing the stack within a park costs
            parks = {p for p in on["source_id"].str.split("-").str[0] if p.startswith("park")}
            in_play = ep.sources[ep.sources["source_id"].isin(on["source_id"])
                                 | ep.sources["source_id"].str.split("-").str[0].isin(parks)]
            told_parks, _ = _ranked(attribute_observations(ep.obs, in_play, "pm25", 75.0, look_ahead=True))
            scored["oracle_parks"] = episodes.score_attribution(ep, told_parks)
            k = scored["batch"]["n"]
            if k:
                n_ex += k
                for m, sc in scored.items():
                    for key in keys:
                        tot[m][key] += sc[key] * k
            log(f"attribution {set_name} episode {seed + 1}/{n}: {k} exceedances, top-1 batch "
                f"{scored['batch']['top1']:.2f}, live {scored['live']['top1']:.2f}, naive {scored['naive']['top1']:.2f}")
        res = {m: {key: v / max(n_ex, 1) for key, v in d.items()} for m, d in tot.items()}
        for m in MODES:
            res[m]["median_rel_err_top_contribution"] = float(np.nanmedian(errs[m])) if errs[m] else None
        out[set_name] = {"seed0": seed0, "exceedances": n_ex, **res}
    out["seconds"] = time.perf_counter() - t0
    return out


def grid_speed() -> dict:
    city = default_city(size_km=50.0)
    g = grid.make_grid(city, 1.0)
    rng = np.random.default_rng(0)
    x0, y0, x1, y1 = city.bbox
    slat, slon = rng.uniform(y0, y1, 300), rng.uniform(x0, x1, 300)
    v = 40 + 20 * np.sin(slat * 50) + rng.normal(0, 3, 300)
    srcs = episodes.make_sources(rng, city.centre_lat, city.centre_lon, 40.0)
    best = []
    for _ in range(3):
        t0 = time.perf_counter()
        grid.estimate_grid(city, g, slat, slon, v, sensor_sd=3.0, sources=srcs, wind_from_deg=270.0)
        best.append(time.perf_counter() - t0)
    return {"cells": int(g.lat.size), "sensors": 300, "seconds_best_of_3": min(best)}


def main() -> int:
    if not OBS.exists():
        print(f"air benchmark: data not found at {OBS}; nothing to do")
        return 0
    t_start = time.perf_counter()
    obs = pd.read_csv(OBS)
    obs["time"] = pd.to_datetime(obs["time"], utc=True)
    log(f"loaded {len(obs)} rows, {obs['station_id'].nunique()} stations")
    # AIR_BENCH_ONLY=attribution,forecast reruns those sections and keeps the others from the last run
    only = {x for x in os.environ.get("AIR_BENCH_ONLY", "").split(",") if x}
    previous = RESULTS / "air.json"
    result = json.loads(previous.read_text()) if only and previous.exists() else {}
    result.update({"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                   "machine_load_1min": os.getloadavg()[0], "cpu_count": os.cpu_count()})
    sections = {"grid_speed": grid_speed, "attribution": lambda: attribution_eval(N_EPISODES),
                "forecast": lambda: forecast_eval(obs), "loso": lambda: loso(obs)}
    for name, fn in sections.items():
        if not only or name in only or name not in result:
            result[name] = fn()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["total_seconds"] = time.perf_counter() - t_start
    result["sections_rerun"] = sorted(only) if only else "all"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "air.json").write_text(json.dumps(result, indent=2, default=float))
    md = render(result)
    (RESULTS / "air.md").write_text(md)
    print(md)
    return 0


def render(r: dict) -> str:
    lo, fc, at, gs = r["loso"], r["forecast"], r["attribution"], r["grid_speed"]
    sub = lo[f"kriging_subsample_every_{KRIGE_EVERY}h"]
    lines = [
        f"# Air quality benchmark ({r['date']}, load {r['machine_load_1min']:.1f} on {r['cpu_count']} cores)",
        "",
        "## Leave-one-station-out, Beijing pm25, 12 stations, 2013-03 to 2015-02",
        "",
        "| model | RMSE | MAE | R² | ratio RMSE vs IDW | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in lo["all_hours"].items():
        lines.append(f"| {name} (all hours) | {s['rmse']:.2f} | {s['mae']:.2f} | {s['r2']:.3f} | "
                     f"{s['rmse'] / lo['all_hours']['idw_p2']['rmse']:.3f} | {s['n']} |")
    for name, s in sub.items():
        lines.append(f"| {name} (every {KRIGE_EVERY}th hour) | {s['rmse']:.2f} | {s['mae']:.2f} | {s['r2']:.3f} | "
                     f"{s['rmse'] / sub['idw_p2']['rmse']:.3f} | {s['n']} |")
    lines += [
        "",
        f"Target RMSE ≤ 0.9 × IDW: **{lo['rmse_ratio_vs_idw']:.3f}** ({'met' if lo['rmse_ratio_vs_idw'] <= 0.9 else 'NOT met'}); "
        f"vs ordinary kriging (subsample) {lo['rmse_ratio_vs_ok_subsample']:.3f}; every hour and target answered: "
        f"{lo['every_hour_and_target_answered']}. One fold: median {np.median(lo['fold_seconds']):.0f} s "
        f"(target ≤ 60 s on an unloaded machine).",
        "",
        "## Forecast vs persistence (fit until " + fc["train_until"] + ", scored after)",
        "",
        "| horizon | model RMSE | persistence RMSE | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for h, tgt in (("+1h", 0.95), ("+6h", 0.8), ("+24h", 0.75)):
        f = fc[h]
        lines.append(f"| {h} | {f['model']['rmse']:.2f} | {f['persistence']['rmse']:.2f} | **{f['rmse_ratio']:.3f}** "
                     f"| ≤ {tgt} ({'met' if f['rmse_ratio'] <= tgt else 'NOT met'}) |")
    if fc.get("blend_weight_xgboost"):
        lines += ["", "Each horizon blends xgboost and a ridge regression of the change from the value at issue time; "
                  "the weight on xgboost is chosen on the last 120 days before the fit's end (both fitted on what "
                  "comes before, scored there), then both are refitted on all of it: "
                  + ", ".join(f"{h} {w}" for h, w in fc["blend_weight_xgboost"].items())
                  + ". Before 2026-11-29 (xgboost alone): 0.835 / 0.793 / 0.830 × persistence. A day ahead the "
                  "trees keep the training winters' regimes; the ridge extrapolates into the scored winter better."]
    if "oracle_line_rmse_ratio" in fc["+24h"]:
        lines += ["", "For scale: the best straight line from the value at issue time, fitted on the scored period "
                  "itself (it sees the future, so it is a reference, not a model), reaches "
                  + " / ".join(f"{fc[h]['oracle_line_rmse_ratio']:.3f}" for h in ("+1h", "+6h", "+24h"))
                  + " × persistence. A day ahead, what the network knows at issue time explains little; "
                  "≤ 0.75 × likely needs information the batch contract's inputs do not carry (weather forecasts for the target day)."]
    lines += [
        "",
        f"## Source attribution on simulated episodes ({at['episodes']} per set, "
        f"{at['candidates_per_episode']} candidates incl. 4 parks × 5 stacks)",
        "",
        "Scored on the exceedances the plumes caused, for the source that contributed most. Two sets of episodes: "
        "`tuned` (seeds 1000+, the ones the method's choices were made on over several sessions) and `held_out` "
        "(seeds 2000+, never looked at while tuning) — the held-out figures are what to expect.",
        "",
        "| method | set | exceedances | top-1 | top-3 | top-1, right park |",
        "|---|---|---|---|---|---|",
    ]
    names = {"batch": "`air attribute` (batch: ±48 h, one stack per park first)",
             "live": "live service (past 36 h, one stack per park first)",
             "live_before_2026_11_28": "before 2026-11-28 (past 36 h, every source free)",
             "naive": "naive upwind/distance", "oracle_active": "diagnosis: batch fit told the active sources",
             "oracle_parks": "diagnosis: told the active sources, of a park only the park"}
    for m, label in names.items():
        for set_name in ("tuned", "held_out"):
            x = at[set_name]
            v = x.get(m)
            bold = "**" if m == "batch" else ""
            if v is None:  # a diagnosis added after the section last ran
                continue
            lines.append(f"| {label} | {set_name} | {x['exceedances']} | {bold}{v['top1']:.2f}{bold} | "
                         f"{bold}{v['top3']:.2f}{bold} | {v['top1_park']:.2f} |")
    t, h = at["tuned"], at["held_out"]
    lines += [
        "",
        f"Batch against the naive ranking, held out: top-1 {h['batch']['top1'] / max(h['naive']['top1'], 1e-9):.2f}×, "
        f"top-3 {h['batch']['top3'] / max(h['naive']['top3'], 1e-9):.2f}×. Median relative error of the top "
        f"source's estimated contribution (batch): {t['batch']['median_rel_err_top_contribution']:.2f} tuned, "
        f"{h['batch']['median_rel_err_top_contribution']:.2f} held out. Targets top-1 ≥ 0.70, top-3 ≥ 0.90: "
        "**not met**.",
        "",
        "How it works: each exceedance is fitted twice by non-negative least squares of plume kernels over all "
        "stations and hours of its window. In one fit every source may take strength; in the other each cluster "
        "of sources within 1 km (an industrial park) is first reduced to the member whose fit leaves the least "
        "noise-weighted squared error. The reduced fit's first source enters with its contribution (the full fit "
        "spreads a park's strength over neighbouring stacks and often ranks the wrong one first), the full fit's "
        "other sources with theirs, all ranked by contribution as CONTRACTS.md §3 asks. "
        "The batch command sees 48 h either side of the exceedance; the live service only the past.",
        "",
        "Where the gap is: told which 2-3 of the 40 sources are active (a diagnosis, not a method), the same fit "
        f"ranks the right one first for {t['oracle_active']['top1']:.2f} (tuned) / {h['oracle_active']['top1']:.2f} "
        "(held out) of the exceedances."
        + (f" Told the active sources but, for a stack, only its park (all five stacks candidates), it falls to "
           f"{t['oracle_parks']['top1']:.2f} / {h['oracle_parks']['top1']:.2f}: choosing the stack within a park "
           "is most of the gap, and it is what the data barely carry. " if t.get("oracle_parks") else " ")
        + "Each station reads the plumes through its own vane error (σ 8°) and the network's wind through a "
        "common one (σ 5°); stacks 300-500 m apart seen from 5-15 km differ by 2-3° of bearing. Measured "
        "2026-11-29 with scripts not kept, on 36 episodes no choice was made on (seeds 3000-3035): given the "
        "other active sources and every source's true on/off hours, a noise-weighted least-squares fit picks "
        "the right stack among its park's siblings for 0.40 of the active park stacks (chance 0.2; 0.30-0.37 "
        "with a strength per fixed 4-48 h block instead of the true hours); with the same episodes simulated "
        "without wind error it picks 0.78. A likelihood that averages each "
        "station-hour over vane offsets picked no better than least squares. So ≥ 0.70 top-1 asks for a "
        "stack choice these observations do not support; the right park (last column) is what an inspector "
        "can be sent to. Also tried (2026-11-28/29, scripts not kept): greedy forward selection with a "
        "strength per 6 h and sibling swaps (seeds 3000-3035: top-1 / top-3 0.28 / 0.43 against the batch "
        "method's 0.29 / 0.52); the fit's kernel as the plume expected under a normal 10° error of direction "
        "(41 directions) instead of the uniform ±8° average of 7 (top-1: seeds 3000-3023 0.20 → 0.28, tuned 0.39 "
        "→ 0.41, held out 0.25 → 0.19, about even pooled; the top source's contribution error 0.61 → 0.47; "
        "within a park it still chose the tallest stack in 54 % against 28 % for the truth); no ridge in the park step (no change); greedy forward selection under "
        "squared error or under a likelihood averaging over vane error (top-1 0.34-0.55 on 4 tuned episodes "
        "against 0.53); a per-hour mixture likelihood over vane offsets with EM and swap search (0.17); "
        "per-6-h strengths in the cluster choice (tuned 0.40), wider or narrower plume spread in it "
        "(0.38-0.46); siblings of the chosen stack at ranks 2-3 (held-out top-3 0.36, worse than letting the "
        "full fit order them); the reduced fit's first source always at rank 1 whatever its contribution "
        "(tuned 0.47 / 0.72, held out 0.25 / 0.45, but in 13 % of station-hours rank 1 was not the largest "
        "contribution, against the contract); backward elimination of weak sources after the park step, by an "
        "F-test-like penalty on the noise-weighted squared error (0.5·ln N: tuned 0.48 / 0.75; 2·ln N: "
        "0.39 / 0.73). Two stacks of one park are both active in 2 of the first 12 tuned episodes, so one "
        "stack per park is a prior, not a rule.",
        "",
        "## Speed and memory",
        "",
        f"- grid update, {gs['cells']} cells from {gs['sensors']} sensors: {gs['seconds_best_of_3']:.3f} s (target ≤ 2 s)",
        f"- peak RSS of this run: {r['peak_rss_mb']:.0f} MB; total run {r['total_seconds']:.0f} s "
        f"(sections run: {r.get('sections_rerun', 'all')})",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
