"""`cityops emergency …` — batch command 7 of CONTRACTS.md and the streaming service."""

from __future__ import annotations

import argparse

from shared.batch_io import run_batch


def register(sub: argparse._SubParsersAction) -> None:
    em = sub.add_parser("emergency", help="emergency: equipment fault detection and the streaming service")
    cmds = em.add_subparsers(dest="emergency_command", metavar="ACTION")
    cmds.required = True

    p = cmds.add_parser("detect", help="equipment fault early warning on one machine's channels")
    p.add_argument("--series", required=True, help="CSV: time plus numeric channel columns")
    p.add_argument("--train-until", required=True, help="ISO 8601; rows up to it are normal operation")
    p.add_argument("--out", required=True)
    p.add_argument("--model", choices=["mset", "hybrid", "pca"], default="mset",
                   help="mset: MSET state estimation (default); hybrid: MSET or linear residuals, whichever "
                        "explains the state (extrapolates proportional relations); pca: the PCA T²+Q baseline")
    p.set_defaults(func=_detect)

    sv = cmds.add_parser("serve", help="the streaming service: machines, worker safety, gas, incidents (port 8113)")
    sv.add_argument("--port", type=int, default=None, help="HTTP port (default CITYOPS_EMERGENCY_PORT or 8113)")
    sv.set_defaults(func=_serve)


def _serve(a: argparse.Namespace) -> int:
    from services.emergency import app

    return app.run(a.port)


def _detect(a: argparse.Namespace) -> int:
    from services.emergency import batch

    return run_batch(batch.detect, a.series, a.train_until, a.out, model=a.model)
