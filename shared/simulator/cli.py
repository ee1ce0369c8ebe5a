"""`cityops simulate`: a synthetic city publishing over MQTT through its gateways."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run the simulated city: sensors publish over MQTT with injected scenarios")
    p.add_argument("--hours", type=float, default=36.0, help="simulated hours (ending now)")
    p.add_argument("--minutes", type=float, default=3.0, help="real minutes to replay them in")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--domains", default=None, help="comma-separated subset of air,water,weather,emergency")
    p.add_argument("--out-dir", type=Path, default=None, help="where truth.json, registry.json, city_config.json go")
    p.add_argument("--no-publish", action="store_true", help="only generate, register and write the files")
    p.set_defaults(func=_simulate)


def prepare(hours: float, seed: int, domains: list[str] | None, out_dir: Path, *, end=None):
    """Generate the city, register its sensors and gateways, write its files."""
    import psycopg

    from shared import settings
    from shared.simulator.city import build
    from shared.stack.config import StackConfig
    from shared.stack.mosquitto import Mosquitto
    from shared.storage.registry import upsert_sensors

    s = settings.load()
    sim = build(hours=hours, seed=seed, domains=domains, end=end)
    sim.write(out_dir)
    with psycopg.connect(s.db_url) as conn:
        upsert_sensors(conn, sim.sensors)
    mq = Mosquitto(StackConfig.from_env())
    mq.apply(gateways=sim.gateways)
    passwords = {gw: mq.password_for("gateways", gw) for gw in sim.gateways}
    return s, sim, passwords


def _simulate(a: argparse.Namespace) -> int:
    import json

    from shared.settings import state_dir
    from shared.simulator.city import publish

    out_dir = a.out_dir or state_dir() / "sim"
    domains = a.domains.split(",") if a.domains else None
    s, sim, passwords = prepare(a.hours, a.seed, domains, out_dir)
    print(f"simulated city: {len(sim.sensors)} sensors on {len(sim.gateways)} gateways, "
          f"{sim.start:%Y-%m-%d %H:%M} + {a.hours:g} h; files in {out_dir}")
    if a.no_publish:
        return 0
    result = publish(sim, minutes=a.minutes, host=s.mqtt_host, port=s.mqtt_port, passwords=passwords)
    (out_dir / "published.json").write_text(json.dumps(result, indent=1))
    print(f"published {result['total']:,} messages in {result['seconds']:.0f} s: {result['published']}")
    return 0
