"""`cityops` — the one command line of the project.

Each room of the house registers its own subcommands (`register(subparsers)` in its
`cli.py`); heavy libraries are imported inside the command functions so that
`cityops --help` and `cityops stack status` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order of `cityops --help`.
COMMAND_MODULES = [
    "shared.stack.cli",  # cityops stack up|down|status
    "shared.storage.cli",  # cityops db migrate|status
    "services.ingest.cli",  # cityops ingest run|sink
    "shared.simulator.cli",  # cityops simulate
    "shared.demo.cli",  # cityops demo
    "services.air_quality.cli",  # cityops air estimate|forecast|attribute|serve
    "services.weather.cli",  # cityops weather nowcast|qc|serve
    "services.water.cli",  # cityops water detect|serve
    "services.emergency.cli",  # cityops emergency detect|serve
    "shared.notify.cli",  # cityops notify serve
    "shared.dashboards.cli",  # cityops grafana provision|files
    "shared.api.cli",  # cityops api serve
    "shared.opendata.cli",  # cityops opendata export|asyncapi-html
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cityops",
        description="CityOps: city environment, water, weather and emergency operations.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # Only tolerate the module itself being absent (a room not built yet), never a
            # missing dependency inside it.
            if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
