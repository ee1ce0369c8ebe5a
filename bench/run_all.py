"""Run every benchmark, one after the other, and collect their result files.

    python -m bench.run_all [--only ingest,air,...]

Each benchmark measures its own baseline in the same run and writes bench/results/<name>.{json,md}
(water-fresh and water-fresh2: the water benchmark again on further scenario seeds; notify at three rates and with
two instances);
this writes bench/results/SUMMARY.md linking them. A benchmark whose data set is absent says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench.common import RESULTS

BENCHES = ["ingest", "air", "weather", "water", "water-fresh", "water-fresh2", "emergency", "notify",
           "notify-2-instances"]
# a benchmark run with other arguments than its defaults: its module and those arguments
VARIANTS = {
    # seeds 12-29 were looked at while designing the water-balance confirmation; 30-47 were not (run once)
    "water-fresh": ("water", ["--first-seed", "12", "--scenarios", "18", "--name", "water-fresh",
                              "--skip-demo-signatures"]),
    "water-fresh2": ("water", ["--first-seed", "30", "--scenarios", "18", "--name", "water-fresh2",
                               "--skip-demo-signatures"]),
    # the README's rows: three rates, then two instances appended to the same result files
    "notify": ("notify", ["--rate", "1000,600,300"]),
    "notify-2-instances": ("notify", ["--instances", "2", "--append"]),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default=None)
    a = ap.parse_args(argv)
    names = a.only.split(",") if a.only else BENCHES
    rows = []
    for name in names:
        print(f"=== bench {name} ===", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        # each in its own process: its memory figures are its own, and one crash does not stop the rest
        module, args = VARIANTS.get(name, (name, []))
        rc = subprocess.run([sys.executable, "-m", f"bench.{module}.run", *args]).returncode
        rows.append((name, rc, time.monotonic() - t0))
    lines = [f"# Benchmarks ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             "| benchmark | exit | seconds | results |", "|---|---|---|---|"]
    # a variant's results are in the file its --name says, else in its module's
    files = {n: (VARIANTS[n][1][VARIANTS[n][1].index("--name") + 1] if "--name" in VARIANTS.get(n, ("", []))[1]
                 else VARIANTS.get(n, (n, []))[0]) for n, _, _ in rows}
    lines += [f"| {n} | {rc} | {s:.0f} | [{files[n]}.md]({files[n]}.md) |" for n, rc, s in rows]
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(rc == 0 for _, rc, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
