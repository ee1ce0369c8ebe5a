"""`cityops stack up | down | status`: the real local stack for the demo, the tests and CI."""

from __future__ import annotations

import json
import time

from shared.stack.config import StackConfig
from shared.stack.kafka import Kafka, StaleBroker
from shared.stack.mosquitto import Mosquitto
from shared.stack.postgres import Postgres


def parts(cfg: StackConfig) -> list:
    return [Postgres(cfg), Mosquitto(cfg), Kafka(cfg)]


def up(cfg: StackConfig | None = None, *, quiet: bool = False) -> dict[str, str]:
    cfg = cfg or StackConfig.from_env()
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    started = []
    for part in parts(cfg):
        t0 = time.monotonic()
        was_running = part.healthy() if part.name != "postgres" else part.running()
        part.up()
        say(f"  {part.name:<10} {'already running' if was_running else 'started'} ({time.monotonic() - t0:.1f} s)")
        if not was_running:
            started.append(part.name)
    created = Kafka(cfg).ensure_topics()
    if created:
        say(f"  kafka      created {len(created)} topics from schemas/topics.py")
    try:
        users = Kafka(cfg).ensure_users()
    except StaleBroker as exc:
        print(f"  kafka      warning: {exc}", flush=True)
        users = []
    if users:
        say(f"  kafka      SCRAM users with ACLs on 127.0.0.1:{cfg.kafka_sasl_port}: {', '.join(users)} "
            f"(credentials in {Kafka(cfg).home / 'clients'})")
    env = write_env(cfg)
    say(f"  settings   {cfg.env_file}")
    return env


def write_env(cfg: StackConfig) -> dict[str, str]:
    pg, mq, kf = Postgres(cfg), Mosquitto(cfg), Kafka(cfg)
    env = {
        "CITYOPS_STATE_DIR": str(cfg.state_dir),
        "CITYOPS_KAFKA_BOOTSTRAP": kf.bootstrap,
        "CITYOPS_DB_URL": pg.url,
        "CITYOPS_MQTT_HOST": "127.0.0.1",
        "CITYOPS_MQTT_PORT": str(cfg.mqtt_port),
        "CITYOPS_MQTT_CREDENTIALS": str(mq.cred_file),
        # the local stack runs the demo and the tests: the shipped demo rosters (published passwords) may load
        "CITYOPS_ALLOW_DEMO_ACCOUNTS": "1",
    }
    cfg.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    cfg.env_file.chmod(0o600)
    return env


def down(cfg: StackConfig | None = None) -> list[str]:
    cfg = cfg or StackConfig.from_env()
    stopped = []
    for part in reversed(parts(cfg)):
        if part.down():
            stopped.append(part.name)
    return stopped


def status(cfg: StackConfig | None = None) -> dict[str, bool]:
    cfg = cfg or StackConfig.from_env()
    return {p.name: bool(p.healthy()) for p in parts(cfg)}


def status_json(cfg: StackConfig | None = None) -> str:
    return json.dumps(status(cfg))
