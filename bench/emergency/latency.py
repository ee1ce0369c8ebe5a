"""Benchmark: wearable message -> worker alert on the shared alerts topic, under load (target p99 <= 2 s).

Starts the real emergency service (`cityops emergency serve`, its own process and consumer groups),
then publishes wearable observations straight to the restricted topic, typed as the ingest gateway types them: WORKERS wearables sending at
RATE messages/s in total for SECONDS, and every SOS_EVERY_S one SOS press from a random wearable (an
SOS is always alerted, critical). Latency per SOS = the alert record's timestamp on the alerts topic
minus the moment the SOS message was sent. An idle run (SOS presses only) in the same service gives
the baseline the loaded figure is compared with.

    cd /work/main && .venv/bin/python -m bench.emergency.latency [--rate 400 --seconds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np

from bench.common import RESULTS, ROOT
from schemas.topics import ALERTS, PERSONAL_OBSERVATIONS
from services.emergency.domain.privacy import episode_pseudonym, pseudonymise

TARGET_P99_S = 2.0


def _env(sensor_id: str, t: datetime, values: dict[str, float]) -> bytes:
    vals = {q: {"value": v, "unit": "1", "qc": 1, "qc_tests": {}} for q, v in values.items()}
    return json.dumps({"event_id": f"{sensor_id}|{t.isoformat()}", "type": "observation.safety",
                       "schema_version": 1, "source": "bench", "occurred_at": t.isoformat(),
                       "ingested_at": t.isoformat(),
                       "payload": {"sensor_id": sensor_id, "domain": "safety", "kind": "wearable",
                                   "gateway_id": "gw-bench", "district": "d05", "lat": 30.25, "lon": 120.15,
                                   "observed_at": t.isoformat(), "values": vals}}).encode()


async def _phase(bootstrap: str, key: bytes, tag: str, *, workers: int, rate: float, seconds: float,
                 sos_every_s: float) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from shared import kafka

    sensors = [f"wb-bench-{tag}-{i:04d}" for i in range(workers)]
    sent: dict[tuple[str, str], float] = {}  # (pseudonym, observed_at) of each SOS -> wall time sent
    got: dict[tuple[str, str], float] = {}
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    await c._client.force_metadata_update()  # noqa: SLF001 - a group-less consumer knows no topics yet
    tps = [TopicPartition(ALERTS, p) for p in c.partitions_for_topic(ALERTS)]
    c.assign(tps)
    await c.seek_to_end(*tps)
    for tp in tps:
        await c.position(tp)
    p = kafka.producer(bootstrap, linger_ms=2)
    await p.start()
    sim = {s: datetime.now(UTC) - timedelta(hours=6) for s in sensors}
    rng = random.Random(7)
    stop = asyncio.Event()

    async def consume():
        while not stop.is_set() or len(got) < len(sent):
            for recs in (await c.getmany(timeout_ms=200)).values():
                for r in recs:
                    a = json.loads(r.value)["payload"]
                    w = a.get("evidence", {}).get("worker")
                    # an SOS press is its own episode: the alert names the worker by that episode's pseudonym
                    if a["kind"] == "sos" and (w, a["evidence"]["observed_at"]) in sent:
                        got.setdefault((w, a["evidence"]["observed_at"]), r.timestamp / 1000.0)
            if stop.is_set() and time.monotonic() > drain_deadline[0]:
                break

    drain_deadline = [float("inf")]
    reader = asyncio.create_task(consume())
    t0 = time.monotonic()
    n = 0
    next_sos = t0 + sos_every_s
    futs = []
    while time.monotonic() - t0 < seconds:
        now = time.monotonic()
        due = int((now - t0) * rate) - n if rate > 0 else 0
        for _ in range(max(due, 0)):
            s = sensors[n % workers]
            sim[s] += timedelta(seconds=30)
            futs.append(await p.send(PERSONAL_OBSERVATIONS, _env(s, sim[s], {
                "heart_rate_bpm": 80 + rng.random() * 10, "lat": 30.25 + rng.random() * 1e-3,
                "lon": 120.15 + rng.random() * 1e-3, "h2s_ppm": 0.3}), key=s.encode()))
            n += 1
        if now >= next_sos:
            s = rng.choice(sensors)
            sim[s] += timedelta(seconds=30)
            sent[(episode_pseudonym(pseudonymise(s, key), sim[s], key), sim[s].isoformat())] = time.time()
            await p.send(PERSONAL_OBSERVATIONS, _env(s, sim[s], {"sos": 1.0, "heart_rate_bpm": 120.0,
                                                              "lat": 30.25, "lon": 120.15}), key=s.encode())
            next_sos += sos_every_s
        if len(futs) > 2000:
            await asyncio.gather(*futs)
            futs = []
        await asyncio.sleep(0.005)
    await asyncio.gather(*futs)
    took = time.monotonic() - t0
    drain_deadline[0] = time.monotonic() + 30
    stop.set()
    await reader
    await p.stop()
    await c.stop()
    lat = np.array([got[k] - sent[k] for k in sent if k in got])
    return {"workers": workers, "rate_target_msg_s": rate, "messages": n + len(sent), "msg_per_s": round((n + len(sent)) / took, 1),
            "sos_sent": len(sent), "alerts_received": len(lat), "lost": len(sent) - len(lat),
            "p50_s": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
            "p95_s": round(float(np.percentile(lat, 95)), 3) if len(lat) else None,
            "p99_s": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
            "max_s": round(float(lat.max()), 3) if len(lat) else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=400.0, help="wearable messages per second in total")
    ap.add_argument("--workers", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--sos-every", type=float, default=0.25)
    ap.add_argument("--port", type=int, default=18813)
    a = ap.parse_args(argv)
    from shared import settings

    s = settings.load()
    tag = secrets.token_hex(3)
    db_url = _throwaway_db(s.db_url, f"bench_emergency_{tag}")
    key = secrets.token_hex(16)
    state = ROOT / ".state" / "bench-emergency" / tag
    state.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CITYOPS_KAFKA_BOOTSTRAP": s.kafka_bootstrap, "CITYOPS_DB_URL": db_url,
           "CITYOPS_STATE_DIR": str(state), "CITYOPS_EMERGENCY_PSEUDONYM_KEY": key,
           "CITYOPS_EMERGENCY_GROUP_PREFIX": f"cityops-emergency-bench-{tag}",
           "CITYOPS_KAFKA_START_AT_MS": str(int(time.time() * 1000))}
    env.pop("CITYOPS_CITY_CONFIG", None)
    log = state / "service.log"
    proc = subprocess.Popen([sys.executable, "-m", "shared.cli", "emergency", "serve", "--port", str(a.port)],
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"emergency service exited {proc.returncode}; see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{a.port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"emergency service not ready in 120 s; see {log}")
            time.sleep(0.5)
        time.sleep(3)  # let both consumer groups finish joining
        idle = asyncio.run(_phase(s.kafka_bootstrap, key.encode(), tag + "i", workers=a.workers, rate=0,
                                  seconds=15, sos_every_s=0.5))
        loaded = asyncio.run(_phase(s.kafka_bootstrap, key.encode(), tag + "l", workers=a.workers, rate=a.rate,
                                    seconds=a.seconds, sos_every_s=a.sos_every))
        if proc.poll() is not None:
            raise SystemExit(f"emergency service died during the run (exit {proc.returncode}); see {log}")
    finally:
        proc.terminate()
        proc.wait(60)
        _drop_db(s.db_url, db_url)
    if not loaded["alerts_received"]:
        raise SystemExit(f"no SOS alert came back; see {log}")
    ratio = loaded["p99_s"] / TARGET_P99_S if loaded["p99_s"] is not None else None
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "target_p99_s": TARGET_P99_S, "idle": idle, "loaded": loaded, "p99_over_target": ratio,
              "p99_loaded_over_idle": (loaded["p99_s"] / idle["p99_s"]) if idle["p99_s"] else None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "emergency-latency.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    section = _markdown(report)
    md = RESULTS / "emergency.md"
    text = md.read_text(encoding="utf-8") if md.exists() else "# Emergency\n"
    start, end = "<!-- latency:start -->", "<!-- latency:end -->"
    if start in text:
        text = text[:text.index(start)] + text[text.index(end) + len(end):].lstrip("\n")
    md.write_text(text.rstrip("\n") + "\n\n" + start + "\n" + section + end + "\n", encoding="utf-8")
    print(section)
    return 0 if ratio is not None and ratio <= 1.0 and loaded["lost"] == 0 else 1


def _throwaway_db(admin_url: str, name: str) -> str:
    """A migrated database of its own, so the benchmark's incidents never land in the shared one."""
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    from shared.storage.migrate import migrate

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + name))
    with psycopg.connect(url) as conn:
        migrate(conn)
    return url


def _drop_db(admin_url: str, url: str) -> None:
    from urllib.parse import urlsplit

    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path[1:]}" WITH (FORCE)')


def _markdown(r: dict) -> str:
    i, lo = r["idle"], r["loaded"]
    ok = r["p99_over_target"] is not None and r["p99_over_target"] <= 1 and lo["lost"] == 0
    return (
        f"## Wearable message → worker alert on the alerts topic ({r['date'][:10]}, `bench/emergency/latency.py`)\n\n"
        f"The real service process; SOS presses published to the restricted topic, latency = alert record "
        f"timestamp − send time. Target p99 ≤ {r['target_p99_s']:g} s. {r['cpus']} CPUs shared with other work.\n\n"
        "| run | wearables | msg/s achieved | SOS sent | alerts | lost | p50 s | p95 s | p99 s | max s |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| idle (baseline) | {i['workers']} | {i['msg_per_s']} | {i['sos_sent']} | {i['alerts_received']} | {i['lost']} "
        f"| {i['p50_s']} | {i['p95_s']} | {i['p99_s']} | {i['max_s']} |\n"
        f"| under load | {lo['workers']} | {lo['msg_per_s']} | {lo['sos_sent']} | {lo['alerts_received']} | {lo['lost']} "
        f"| {lo['p50_s']} | {lo['p95_s']} | {lo['p99_s']} | {lo['max_s']} |\n\n"
        f"p99 under load / target = **{r['p99_over_target']:.2f}** ({'met' if ok else 'NOT met'}); "
        f"p99 under load / idle p99 = {r['p99_loaded_over_idle']:.2f}.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
