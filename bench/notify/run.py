"""Benchmark: alerts at a fixed rate through routing and dedup to the webhook and MQTT channels.

    .venv/bin/python -m bench.notify.run [--rate 1000] [--seconds 20] [--dup-share 0.1]

Real Kafka, PostgreSQL (a throwaway database) and Mosquitto; the webhook receiver is a local
HTTP server in its own process (an outside party: its own time is not ours, but it answers at
once). A generator process publishes `rate` alerts per second (a share of them repeats of an
earlier dedup key), the service in this process routes, deduplicates and sends each new alert
to one recipient over webhook and MQTT (QoS 1, PUBACK awaited).

Dispatch latency = `sent_at` (webhook 2xx / MQTT PUBACK received) − the alert's Kafka
produce time. Memory = peak RSS of this process (the service) under load.
Targets (issue 7): p99 < 500 ms at 1,000 alerts/s, RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _receiver(port_q: mp.Queue, stop_ev) -> None:
    from shared.notify.testing import HttpReceiver

    async def main():
        r = await HttpReceiver().start()
        port_q.put(r.port)
        while not stop_ev.is_set():
            await asyncio.sleep(0.2)
        port_q.put(len(r.requests))

    asyncio.run(main())


def _generator(
    bootstrap: str, topic: str, rate: int, seconds: float, dup_share: float, start_at: float
) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.alerts import Alert, GeoPoint
    from shared import kafka

    async def main():
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        await p.start()
        while time.time() < start_at:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        n, keys = 0, []
        total = int(rate * seconds)
        rnd = __import__("random").Random(7)
        while n < total:
            due = int((time.monotonic() - t0) * rate) + 1
            while n < min(due, total):
                if keys and rnd.random() < dup_share:
                    key = rnd.choice(keys[-500:])
                else:
                    key = f"bench:{n}"
                    keys.append(key)
                now = datetime.now(UTC)
                a = Alert(
                    alert_id=f"b-{n}",
                    domain=rnd.choice(["air", "water", "weather", "emergency"]),
                    kind="bench",
                    severity="major",
                    title_zh="压测告警",
                    title_en="Benchmark alert",
                    message_zh="压测。",
                    message_en="Load test.",
                    location=GeoPoint(lat=30.25, lon=120.15),
                    district=f"d0{1 + n % 9}",
                    dedup_key=key,
                    raised_at=now,
                )
                await p.send(
                    topic,
                    kafka.encode(kafka.envelope("alert", "bench", a, occurred_at=now)),
                    key=key.encode(),
                )
                n += 1
            await asyncio.sleep(0.002)
        await p.flush()
        await p.stop()

    asyncio.run(main())


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _extra_instance(settings_kw: dict, ready_ev, stop_ev) -> None:
    """Another service instance in its own process: same consumer group, same database."""
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings
    from shared.notify.testing import ServiceRunner

    async def main():
        runner = await ServiceRunner(NotifyService(NotifySettings(**settings_kw))).start()
        ready_ev.set()
        while not stop_ev.is_set():
            await asyncio.sleep(0.2)
        await runner.stop()

    asyncio.run(main())


async def run(rate: int, seconds: float, dup_share: float, instances: int = 1) -> dict:
    import psycopg
    import yaml

    from shared.notify.app import provision_mqtt_users
    from shared.notify.handlers import NotifyService
    from shared.notify.settings import NotifySettings
    from shared.notify.testing import ServiceRunner, create_topics, delete_topics
    from shared.settings import load
    from shared.storage.migrate import migrate

    base = load()
    tag = secrets.token_hex(4)
    dbname = f"bench_notify_{tag}"
    with psycopg.connect(base.db_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    db_url = urlunsplit(urlsplit(base.db_url)._replace(path="/" + dbname))
    with psycopg.connect(db_url) as c:
        migrate(c)
    topics = {k: f"bench.notify.{tag}.{k}" for k in ("alerts", "tasks", "updates")}
    await create_topics(base.kafka_bootstrap, list(topics.values()), partitions=3)

    ctx = mp.get_context("spawn")
    port_q, stop_ev = ctx.Queue(), ctx.Event()
    recv = ctx.Process(target=_receiver, args=(port_q, stop_ev), daemon=True)
    recv.start()
    port = port_q.get(timeout=60)

    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-notify-{tag}"
    d.mkdir(parents=True)
    (d / "roster.yaml").write_text(
        yaml.safe_dump(
            {
                "people": [
                    {"id": "bench-desk", "name": "Bench desk", "language": "zh", "roles": ["dispatcher"]}
                ]
            }
        )
    )
    (d / "routing.yaml").write_text(
        yaml.safe_dump(
            {
                "timezone": "UTC",
                "dedup_window_s": 900,
                "group_window_s": 0,
                "rate_limit_per_minute": 10**9,
                "rules": [
                    {
                        "name": "all",
                        "repeat_until_ack": False,
                        "tiers": [
                            {
                                "recipients": ["bench-desk"],
                                "channels": ["webhook", "mqtt"],
                                "ack_timeout_s": 3600,
                            }
                        ],
                    }
                ],
            }
        )
    )
    s = NotifySettings(
        db_url=db_url,
        notify_routing=d / "routing.yaml",
        notify_roster=d / "roster.yaml",
        notify_group=f"bench-notify-{tag}",
        notify_alerts_topic=topics["alerts"],
        notify_tasks_topic=topics["tasks"],
        notify_task_updates_topic=topics["updates"],
        notify_webhook_url=f"http://127.0.0.1:{port}/hook",
        notify_webhook_secret=secrets.token_hex(16),
        notify_poll_s=0.5,
    )
    svc = NotifyService(s)
    extra, extra_stop = [], ctx.Event()
    for _ in range(instances - 1):
        ready = ctx.Event()
        kw = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in s.model_dump().items()
            if k.startswith("notify_")
        }
        proc = ctx.Process(
            target=_extra_instance, args=({**kw, "db_url": db_url}, ready, extra_stop), daemon=True
        )
        proc.start()
        extra.append((proc, ready))
    for _proc, ready in extra:
        if not await asyncio.to_thread(ready.wait, 120):
            raise RuntimeError("an extra service instance did not become ready in 120 s")
    extra_cpu0 = [_cpu_s(p.pid) for p, _ in extra]
    provision_mqtt_users(svc.roster)
    runner = await ServiceRunner(svc).start()
    rss_idle = _rss_mb()
    import resource

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    start_at = time.time() + 2
    gen = ctx.Process(
        target=_generator,
        args=(base.kafka_bootstrap, topics["alerts"], rate, seconds, dup_share, start_at),
        daemon=True,
    )
    gen.start()
    peak = rss_idle
    extra_peak = 0.0
    expected_alerts = None
    t_end = None
    deadline = time.time() + seconds + 120

    def count_alerts() -> int:
        with psycopg.connect(db_url) as c:
            return c.execute("SELECT count(DISTINCT dedup_key) FROM alerts").fetchone()[0]

    def progress() -> tuple[int, int]:
        with psycopg.connect(db_url) as c:
            return c.execute(
                "SELECT (SELECT count(*) FROM notify_inbox),"
                " (SELECT count(*) FROM deliveries WHERE status <> 'sent')"
            ).fetchone()

    # the harness's own database reads run in a thread: they must not block the service's event loop
    while time.time() < deadline:
        await asyncio.sleep(0.5)
        peak = max(peak, _rss_mb())
        extra_peak = max([extra_peak, *(_rss_mb(p.pid) for p, _ in extra)])
        if not gen.is_alive() and expected_alerts is None:
            t_end = time.time()
            expected_alerts = await asyncio.to_thread(count_alerts)
        if expected_alerts is not None:
            events, pending = await asyncio.to_thread(progress)
            if events >= int(rate * seconds) and pending == 0:
                break
    drained_at = time.time()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    cpu_s += sum(_cpu_s(p.pid) - c0 for (p, _), c0 in zip(extra, extra_cpu0, strict=True))
    extra_stop.set()
    for p, _ in extra:
        p.join(60)
    busy_wall_s = drained_at - start_at
    await runner.stop()
    stop_ev.set()
    received = port_q.get(timeout=30)
    with psycopg.connect(db_url) as c:
        lat = c.execute(
            "SELECT d.channel, count(*),"
            " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM d.sent_at - a.raised_at) * 1000),"
            " max(extract(epoch FROM d.sent_at - a.raised_at) * 1000),"
            " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM d.sent_at - d.created_at) * 1000)"
            " FROM deliveries d JOIN alerts a ON a.alert_id = d.subject_id WHERE d.status = 'sent' GROUP BY d.channel"
        ).fetchall()
        alerts, repeats = c.execute("SELECT count(*), sum(repeat_count) FROM alerts").fetchone()
        events = c.execute("SELECT count(*) FROM notify_inbox").fetchone()[0]
        dup_deliveries = c.execute(
            "SELECT count(*) - count(DISTINCT (subject_id, channel)) FROM deliveries"
        ).fetchone()[0]
        first, last = c.execute("SELECT min(raised_at), max(raised_at) FROM alerts").fetchone()
    with psycopg.connect(base.db_url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    await delete_topics(base.kafka_bootstrap, list(topics.values()))
    per_channel = {
        ch: {
            "sent": n,
            "p50_ms": round(float(p[0]), 1),
            "p95_ms": round(float(p[1]), 1),
            "p99_ms": round(float(p[2]), 1),
            "max_ms": round(float(mx), 1),
            "p99_internal_ms": round(float(pi), 1),
        }
        for ch, n, p, mx, pi in lat
    }
    p99 = max(v["p99_ms"] for v in per_channel.values())
    return {
        "benchmark": "notify",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "host": socket.gethostname(),
        },
        "offered_rate_alerts_s": rate,
        "seconds": seconds,
        "dup_share": dup_share,
        "events_consumed": events,
        "alerts_stored": alerts,
        "repeats_counted": int(repeats or 0),
        "duplicate_deliveries": dup_deliveries,
        "webhook_requests_received": received,
        "drain_after_generator_s": round(drained_at - (t_end or drained_at), 1),
        "channels": per_channel,
        "p99_dispatch_ms": p99,
        "service_cpu_s": round(cpu_s, 1),
        "service_cpu_ms_per_alert": round(1000 * cpu_s / max(events, 1), 3),
        "service_cpu_share_of_one_core": round(cpu_s / busy_wall_s, 2),  # all instances together
        "throughput_alerts_s": round(events / busy_wall_s, 1),
        "rss_idle_mb": round(rss_idle, 1),
        "rss_peak_mb": round(max(peak, extra_peak), 1),
        "instances": instances,
        "targets": {"p99_dispatch_ms": 500, "rss_peak_mb": 300},
        "meets_targets": p99 < 500 and peak < 300,
    }


def _md(result: dict) -> str:
    rows = "\n".join(
        f"| {ch} | {v['sent']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | {v['max_ms']} | "
        f"{v['p99_internal_ms']} |"
        for ch, v in result["channels"].items()
    )
    return f"""## {result["offered_rate_alerts_s"]} alerts/s for {result["seconds"]} s ({result.get("instances", 1)} service instance(s))

Run at {result["when"]} on {result["machine"]["cpus"]} CPUs (1-min load average at the end: {result["machine"]["load_avg_1m"]};
the machine is shared with other engineers' builds and tests).
{result["dup_share"]:.0%} of the alerts repeat an earlier dedup key. Consumed {result["events_consumed"]} events, stored
{result["alerts_stored"]} alerts, counted {result["repeats_counted"]} repeats; duplicate deliveries:
{result["duplicate_deliveries"]}; webhook requests received by the stand-in: {result["webhook_requests_received"]}.

| channel | sent | p50 ms | p95 ms | p99 ms | max ms | p99 internal ms |
|---|---|---|---|---|---|---|
{rows}

Service process CPU: {result["service_cpu_s"]} s = {result["service_cpu_ms_per_alert"]} ms per alert (2 deliveries
each); it got {result["service_cpu_share_of_one_core"]} of one core on average; end-to-end throughput
{result["throughput_alerts_s"]} alerts/s (generator start → last delivery). Peak RSS of the largest service process {result["rss_peak_mb"]} MB
(idle {result["rss_idle_mb"]} MB). Targets p99 < 500 ms, RSS < 300 MB → **{"met" if result["meets_targets"] else "NOT met"}**.
"""


def write(results: list[dict]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "notify.json").write_text(json.dumps({"runs": results}, indent=1))
    (RESULTS / "notify.md").write_text(
        "# Notification service benchmark\n\n"
        + "".join(
            f"- `.venv/bin/python -m bench.notify.run --rate {r['offered_rate_alerts_s']} --seconds {r['seconds']}"
            f" --instances {r.get('instances', 1)}`\n"
            for r in results
        )
        + "\n"
        "Latency = channel acceptance (webhook 2xx / MQTT PUBACK) − Kafka produce time of the alert; "
        '"internal" = from the delivery row\'s creation (consumer batch start) to acceptance.\n\n'
        + "\n".join(_md(r) for r in results)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", default="1000", help="alerts per second; a comma list runs several in turn")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--dup-share", type=float, default=0.1)
    ap.add_argument(
        "--instances", type=int, default=1, help="service instances (processes) in one consumer group"
    )
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--append", action="store_true", help="add to the runs already in bench/results/notify.json"
    )
    a = ap.parse_args()
    from shared.observability import setup_logging

    setup_logging("WARNING")
    results = []
    for rate in (int(x) for x in a.rate.split(",")):
        results.append(asyncio.run(run(rate, a.seconds, a.dup_share, a.instances)))
        print(json.dumps(results[-1], indent=1), flush=True)
    if not a.no_write:
        if a.append and (RESULTS / "notify.json").exists():
            results = json.loads((RESULTS / "notify.json").read_text())["runs"] + results
        write(results)


if __name__ == "__main__":
    main()
