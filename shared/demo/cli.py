"""`cityops demo`"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: real stack + every service + a simulated city, with a summary")
    p.add_argument("--hours", type=float, default=24.0, help="simulated hours (24: the run the tests check)")
    p.add_argument("--minutes", type=float, default=2.5, help="real minutes to replay them in")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out-dir", type=Path, default=None, help="default: .state/demo")
    p.add_argument("--keep-services", action="store_true", help="leave the services running afterwards")
    p.add_argument("--domains", default=None, help="comma-separated subset of air,water,weather,emergency")
    p.add_argument("--base-port", type=int, default=8100, help="services listen on base+1 … base+30")
    p.add_argument("--end", default=None, help="end of the simulated period, ISO 8601 (default: now); the same "
                   "seed and end give the same city, so a run can be repeated exactly")
    p.set_defaults(func=_demo)


def _demo(a: argparse.Namespace) -> int:
    import pandas as pd

    from shared.demo.runner import run
    from shared.settings import state_dir

    end = None
    if a.end:
        try:
            end = pd.Timestamp(a.end)
        except ValueError:
            raise SystemExit(f"error: --end {a.end!r} is not an ISO 8601 time (e.g. 2026-11-27T16:00Z)") from None
        end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
        if end > pd.Timestamp.now(tz="UTC"):
            raise SystemExit("error: --end is in the future; the simulated readings must all lie in the past")

    summary = run(hours=a.hours, minutes=a.minutes, seed=a.seed, out_dir=a.out_dir or state_dir() / "demo",
                  keep_services=a.keep_services, base_port=a.base_port,
                  domains=a.domains.split(",") if a.domains else None, end=end)
    return exit_code(summary)


def exit_code(summary: dict) -> int:
    """0 only when every message is accounted for, the services finished their work and every injected scenario
    that was checked was detected; otherwise 1, with the reasons on stderr (a CI job or a cron must not read a
    run that missed a leak as a success)."""
    import sys

    why = []
    if not summary["accounted"]:
        why.append("not every published message is accounted for")
    if not (summary.get("settled") or {}).get("settled", True):
        why.append("the services were still busy when the run was judged")
    why += [f"missed {x['domain']}/{x['scenario']}" for x in summary.get("scenarios", []) if x.get("detected") is False]
    for w in why:
        print(f"demo: {w}", file=sys.stderr)
    return 1 if why else 0
