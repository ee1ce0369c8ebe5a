"""Which leak signatures and logger layout suit the live service: the city demo's leaks, named under each.

    cd /work/main && .venv/bin/python -m bench.water.demo_signatures

The batch benchmark (bench/water/run.py: weeks of SCADA, day-long windows) favours signatures from the
network's operating state. The live service runs the demo's settings instead (Net3, windows of a few hours),
and keeps the `.inp`'s initial state. This measures that choice on the service's own terms, and the demo
utility's logger layout (12 loggers spread evenly, plus 3 where `cityops water place-loggers` puts them):
for several seeds and start hours, the demo's burst and growing leak are fed through the monitor as the
service trains it (`water_history_days` of history). A leak counts as named when an alarm after its start
lists its pipe among the top 10 candidates or puts the top candidate within 300 m — what the demo and
tests/test_water_scenario.py judge; the table also gives the best rank of the true pipe (top 3) and how
often the top candidate is within 300 m. Results: bench/results/water-demo-signatures.{json,md}.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.common import RESULTS
from services.water.domain.detection import add_water_balance, build_monitor, scada_to_wide
from services.water.domain.network import load_network
from services.water.domain.simulate import generate, history_and_stream, network_path
from services.water.settings import WaterSettings
from shared.city import default_city

SEEDS = (7, 11, 5, 13, 3, 17, 21, 29)
START_HOURS = ("00:17", "06:17", "12:17", "17:42")
# (name, signature state, pressure loggers placed beside the 12 spread ones); the first is the live service's
SETUPS = (("initial state, 12 spread + 3 placed loggers (the service and demo)", "initial", 3),
          ("operating state, 12 spread + 3 placed loggers", "operating", 3),
          ("initial state, 12 spread loggers (before 2026-11-29)", "initial", 0))


def leak_ranks(seed: int, start: pd.Timestamp, state: str, extra: int, net, cache_dir: Path) -> list[dict]:
    """Per leak of the demo: the best rank of its pipe among an alarm's candidates (None when never listed)
    and whether some alarm's top candidate lies within 300 m of pipe distance."""
    sc = generate(default_city(), start, 24.0, seed=seed, extra_loggers=extra)
    cfg = sc.config
    days = WaterSettings.model_fields["water_history_days"].default
    both = history_and_stream(sc, start, days, seed=seed + 1000)
    until = pd.Timestamp(cfg["training"]["leak_free_until"])
    wide, sensors, step = scada_to_wide(both)
    sensors = add_water_balance(wide, sensors, net, step)
    monitor = build_monitor(net, wide.loc[wide.index <= until].dropna(how="all"), sensors, step,
                            cache_dir=cache_dir, signature_state=state, **cfg["monitor"])
    monitor.update(wide.loc[wide.index > until])
    monitor.flush()
    # the alarms as raised (provisional candidates) and the leaks as finally localised
    alarms = monitor.take_alarms() + list(monitor.leaks)
    out = []
    for truth in (x for x in sc.truth if x["scenario"] in ("pipe_burst", "incipient_leak")):
        after = [a for a in alarms if a.detected_at >= pd.Timestamp(truth["start"]) and a.candidates]
        ranks = [[c.pipe_id for c in a.candidates].index(truth["pipe_id"]) + 1 for a in after
                 if truth["pipe_id"] in [c.pipe_id for c in a.candidates]]
        near = any(net.pipe_distance_m(a.candidates[0].pipe_id, truth["pipe_id"]) <= 300.0 for a in after)
        out.append({"rank": min(ranks) if ranks else None, "top_within_300m": near})
    return out


def main() -> int:
    cache_dir = Path(os.environ.get("CITYOPS_CACHE_DIR", Path(tempfile.gettempdir()) / "cityops-bench-water"))
    net = load_network(network_path())
    runs = []
    total = {name: {"named": 0, "top3": 0, "top_within_300m": 0, "leaks": 0} for name, _, _ in SETUPS}
    combos = list(itertools.product(SEEDS, START_HOURS))
    for k, (seed, hh) in enumerate(combos):
        start = pd.Timestamp(f"2026-11-27T{hh}Z")
        row = {"seed": seed, "start": start.isoformat()}
        for name, state, extra in SETUPS:
            leaks = leak_ranks(seed, start, state, extra, net, cache_dir)
            t = total[name]
            for leak in leaks:
                t["leaks"] += 1
                t["named"] += (leak["rank"] is not None and leak["rank"] <= 10) or leak["top_within_300m"]
                t["top3"] += leak["rank"] is not None and leak["rank"] <= 3
                t["top_within_300m"] += leak["top_within_300m"]
            row[name] = " / ".join(str(x["rank"] or "-") + ("*" if x["top_within_300m"] else "") for x in leaks)
        runs.append(row)
        print(f"[{k + 1}/{len(combos)}] seed {seed} start {hh}Z: " +
              "; ".join(f"{n}: {row[n]}" for n, _, _ in SETUPS), file=sys.stderr)
    result = {"date": pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d"), "network": network_path().rsplit("/", 1)[-1],
              "runs": runs, "totals": total}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "water-demo-signatures.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Water demo: leaks named under each signature state and logger layout ({result['date']})", "",
             f"The city demo's burst and growing leak on {result['network']}, {len(SEEDS)} seeds x "
             f"{len(START_HOURS)} start hours, fed through the monitor as the live service trains it. Named: an "
             "alarm after the leak's start lists its pipe in the top 10 or has its top candidate within 300 m.", "",
             "| setup | leaks | named | pipe in the top 3 | top candidate within 300 m |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {t['leaks']} | {t['named']} | {t['top3']} | {t['top_within_300m']} |" for n, t in total.items()]
    lines += ["", "Per run: the best rank of the true pipe for the burst / the growing leak ('-' never listed; "
              "'*' some alarm's top candidate within 300 m).", "",
              "| seed | start | " + " | ".join(n for n, _, _ in SETUPS) + " |",
              "|---|---|" + "---|" * len(SETUPS)]
    lines += [f"| {r['seed']} | {r['start']} | " + " | ".join(r[n] for n, _, _ in SETUPS) + " |" for r in runs]
    lines += ["", "The live service keeps the initial state; the batch command, judged on weeks of SCADA with "
              "day-long windows (bench/results/water.md), uses the operating state. The demo's seed 7 and the "
              "start hours were looked at while choosing the 3 placed loggers; seeds 3, 17, 21 and 29 were added "
              "to check the choice, not tuned on."]
    (RESULTS / "water-demo-signatures.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
