"""`cityops demo`: the whole simulated city on the real stack, end to end, with a summary.

1. the stack is brought up and migrated; 2. the simulated city is generated, its sensors and
gateways registered; 3. every service in this checkout is started as its own process;
4. the city publishes over MQTT for a few real minutes; 5. once the pipeline has drained,
every published message is accounted for (accepted to Kafka + dead-lettered = published;
database rows = readings), latency per stage is read from the services' metrics, and each
injected scenario is checked against the alerts the services raised.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg

from schemas.topics import DEADLETTER, OBSERVATION_TOPIC, PERSONAL_OBSERVATIONS
from shared.demo.services import suite, wait_ready
from shared.simulator.city import DOMAIN_GENERATORS


class OffsetReader:
    """End offsets of topics, from one long-lived group-less consumer on its own event loop."""

    def __init__(self, bootstrap: str):
        from aiokafka import AIOKafkaConsumer

        self._loop = asyncio.new_event_loop()

        async def make():
            c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
            await c.start()
            return c

        self._c = self._loop.run_until_complete(make())
        self._bootstrap = bootstrap
        self._admin: Any = None

    async def _ends(self, topics: list[str]) -> dict[str, int]:
        from aiokafka import TopicPartition

        out = {}
        for t in topics:
            parts = self._c.partitions_for_topic(t)
            if not parts:
                await self._c._client.force_metadata_update()  # noqa: SLF001 - new topic
                parts = self._c.partitions_for_topic(t) or set()
            tps = [TopicPartition(t, p) for p in parts]
            ends = await self._c.end_offsets(tps) if tps else {}
            out[t] = int(sum(ends.values()))
        return out

    def ends(self, topics: list[str]) -> dict[str, int]:
        return self._loop.run_until_complete(self._ends(topics))

    async def _group_lag(self, prefix: str) -> dict[str, int]:
        from aiokafka.admin import AIOKafkaAdminClient

        if self._admin is None:
            self._admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
            await self._admin.start()
        out: dict[str, int] = {}
        for g in sorted(x[0] for x in await self._admin.list_consumer_groups() if str(x[0]).startswith(prefix)):
            committed = await self._admin.list_consumer_group_offsets(g)
            parts = [tp for tp, om in committed.items() if om is not None and om.offset >= 0]
            ends = await self._c.end_offsets(parts) if parts else {}
            out[g] = int(sum(max(ends[tp] - committed[tp].offset, 0) for tp in parts))
        return out

    def group_lag(self, prefix: str) -> dict[str, int]:
        """Records not yet handled (end offset minus committed offset) of every consumer group named `prefix…`."""
        return self._loop.run_until_complete(self._group_lag(prefix))

    def close(self) -> None:
        self._loop.run_until_complete(self._c.stop())
        if self._admin is not None:
            self._loop.run_until_complete(self._admin.close())
        self._loop.close()


def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    r = OffsetReader(bootstrap)
    try:
        return r.ends(topics)
    finally:
        r.close()


def pending_from_metrics(text: str) -> float:
    """Work a service holds in memory that its consumer group has already committed (cityops_pending_work)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("cityops_pending_work{") or line.startswith("cityops_pending_work "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_settled(offsets: OffsetReader, group_prefix: str, procs, *, quiet_s: float = 8.0,
                 stall_s: float = 180.0) -> dict[str, Any]:
    """Wait until every service of this run has handled what reached it: each consumer group has committed its
    topics' ends and no service reports work in hand, for `quiet_s` in a row (a domain service's outputs start new
    work for the notification service). Gives up after `stall_s` without progress; returns what was left."""
    t0 = time.monotonic()
    last: tuple = ()
    last_change = quiet_since = time.monotonic()
    while True:
        lag = offsets.group_lag(group_prefix)
        pending = {p.name: pending_from_metrics(p.metrics()) for p in procs}
        state = (tuple(sorted(lag.items())), tuple(sorted(pending.items())))
        busy = {**{g.removeprefix(group_prefix): n for g, n in lag.items() if n},
                **{f"{k} (in hand)": v for k, v in pending.items() if v}}
        now = time.monotonic()
        if state != last:
            last, last_change = state, now
            if busy:
                print("    services still working: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(busy.items())),
                      flush=True)
        if busy:
            quiet_since = now
        elif now - quiet_since >= quiet_s:
            return {"settled": True, "seconds": round(now - t0, 1), "left": {}}
        if now - last_change > stall_s:
            return {"settled": False, "seconds": round(now - t0, 1), "left": busy}
        time.sleep(2)


def quantiles_from_metrics(text: str, metric: str, labels: dict[str, str]) -> dict[str, float] | None:
    """p50/p99 (upper bucket bounds) of a Prometheus histogram from its text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    count = 0.0
    for fam in text_string_to_metric_families(text):
        if fam.name != metric:
            continue
        for s in fam.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                count = s.value
    if not buckets or count == 0:
        return None
    buckets.sort()

    def q(p: float) -> float:
        for le, c in buckets:
            if c >= p * count:
                return le
        return float("inf")

    return {"p50_s": q(0.5), "p99_s": q(0.99), "n": int(count)}


def _db_counts(db_url: str, sensor_ids: list[str], since: datetime, window: tuple[datetime, datetime] | None = None,
               keys: tuple[list[str], list[str], list[datetime]] | None = None) -> dict[str, Any]:
    """Rows of this run's sensors inside its simulated window, at this run's (sensor, quantity, time) keys
    (`keys`): an earlier run over an overlapping window is not counted; a reading an earlier run already stored
    at the same key counts once, as it is stored once."""
    t0, t1 = window or (since, datetime.now(UTC))
    at = ("JOIN unnest(%s::text[], %s::text[], %s::timestamptz[]) AS run(sensor_id, quantity, time) "
          "USING (sensor_id, quantity, time) ") if keys is not None else ""
    args: tuple = keys if keys is not None else ()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            f"SELECT count(*) FROM observations {at}WHERE sensor_id = ANY(%s) AND time >= %s AND time <= %s",
            (*args, sensor_ids, t0, t1),
        ).fetchone()[0]
        worker = conn.execute(
            f"SELECT count(*) FROM restricted.worker_observations {at}WHERE sensor_id = ANY(%s) AND time >= %s "
            "AND time <= %s", (*args, sensor_ids, t0, t1),
        ).fetchone()[0]
        dl = conn.execute(
            "SELECT reason_code, count(*) FROM dead_letters WHERE received_at >= %s AND stage = 'ingest' "
            "GROUP BY 1 ORDER BY 1", (since,)
        ).fetchall()
        # dead letters of the services downstream (a delivery an earlier run left for a webhook that is gone):
        # on the same topic, but not what the gateway refused of this run's messages
        other_dead = conn.execute(
            "SELECT count(*) FROM dead_letters WHERE received_at >= %s AND stage <> 'ingest'", (since,)
        ).fetchone()[0]
        # (an earlier run's alerts in the same simulated hours are read too: run() says so before it starts).
        # raised_at is simulated time: the window's, not the wall clock's (a run with --end days ago found none)
        alerts = conn.execute(
            "SELECT alert_id, domain, kind, severity, level, district, raised_at, evidence, title_en "
            "FROM alerts WHERE raised_at >= %s - interval '1 day' AND raised_at <= %s + interval '1 day' "
            "ORDER BY raised_at", (t0, t1)
        ).fetchall()
        incidents = conn.execute(
            "SELECT incident_id, kind, status, opened_at, report_path FROM incidents "
            "WHERE opened_at >= %s AND opened_at <= %s ORDER BY opened_at", (t0, t1)
        ).fetchall()
        bulletins = conn.execute(
            "SELECT count(*), count(DISTINCT district), count(DISTINCT issued_at) FROM bulletins "
            "WHERE issued_at > %s AND issued_at <= %s", (t0, t1)
        ).fetchone()
    return {
        "observation_rows": rows, "worker_rows": worker, "dead_letters": dict(dl), "other_dead_letters": other_dead,
        "bulletins": {"count": bulletins[0], "districts": bulletins[1], "hours": bulletins[2]},
        "incidents": [{"incident_id": i, "kind": k, "status": st, "opened_at": o.isoformat(), "report": r}
                      for i, k, st, o, r in incidents],
        "alerts": [dict(zip(["alert_id", "domain", "kind", "severity", "level", "district", "raised_at", "evidence",
                             "title_en"], a, strict=True)) for a in alerts],
    }


def alerts_in_window(db_url: str, t0: datetime, t1: datetime) -> int:
    """Alerts already stored with a raised_at inside the simulated window [t0, t1] (an earlier run of the same city)."""
    with psycopg.connect(db_url) as conn:
        return int(conn.execute("SELECT count(*) FROM alerts WHERE raised_at >= %s AND raised_at <= %s",
                                (t0, t1)).fetchone()[0])


def check_scenarios(sim, alerts: list[dict]) -> list[dict]:
    """Ask each domain whether its injected scenarios were detected (`check_detection` in its simulate.py)."""
    out = []
    for sc in sim.scenarios:
        mod = importlib.import_module(DOMAIN_GENERATORS.get(sc.domain, ""))
        checker = getattr(mod, "check_detection", None)
        for truth in sc.truth:
            if checker is None:
                out.append({"domain": sc.domain, "scenario": truth.get("scenario"), "detected": None,
                            "note": "no detection check in this domain yet"})
                continue
            res = checker(truth, alerts)
            out.append({"domain": sc.domain, "scenario": truth.get("scenario"), **res})
    return out


def run(*, hours: float, minutes: float, seed: int, out_dir: Path, keep_services: bool = False,
        base_port: int = 8100, domains: list[str] | None = None, end: pd.Timestamp | None = None) -> dict[str, Any]:
    from shared import settings
    from shared.simulator.city import publish
    from shared.simulator.cli import prepare
    from shared.stack import manager
    from shared.storage.migrate import migrate

    t_start = time.monotonic()
    print("1/5 stack", flush=True)
    manager.up()
    s = settings.load()
    with psycopg.connect(s.db_url) as conn:
        migrate(conn)
    print("2/5 simulated city", flush=True)
    s, sim, passwords = prepare(hours, seed, domains, out_dir, end=end)
    n_msgs = len(sim.messages())
    print(f"    {len(sim.sensors)} sensors on {len(sim.gateways)} gateways, {n_msgs:,} messages over {hours:g} "
          f"simulated hours, {len(sim.truth)} injected scenarios", flush=True)
    earlier = alerts_in_window(s.db_url, sim.start.to_pydatetime(), (sim.start + pd.Timedelta(hours=hours)).to_pydatetime())
    if earlier:
        print(f"    NOTE: {earlier} alerts of these simulated hours are already stored by an earlier run (runs of one "
              "day share most simulated hours). Alert ids are stable (a replay adds nothing), so where this run raises the "
              "same alert the stored version stays, and the check below reads the earlier run's alerts too: to judge "
              "this run alone (say, a change to a model), pick another --end or a fresh database (CITYOPS_DB_URL).",
              flush=True)
    print("3/5 services", flush=True)
    from shared.demo.outside import OutsideParties

    outside = OutsideParties()
    outside_env = outside.start()
    procs = suite(out_dir / "logs", base_port)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    env = {
        "CITYOPS_CITY_CONFIG": str(out_dir / "city_config.json"), "CITYOPS_DEMO_DIR": str(out_dir),
        # this run's consumer groups start now: nothing of earlier runs or tests is replayed into it
        "CITYOPS_KAFKA_GROUP_PREFIX": f"demo-{run_id}-",
        "CITYOPS_KAFKA_START_AT_MS": str(int(time.time() * 1000)),
        "CITYOPS_INGEST_SHARE_GROUP": f"demo-{run_id}",
        "CITYOPS_INGEST_INSTANCE": f"demo-{run_id}",
        "CITYOPS_INGEST_SESSION_EXPIRY_S": "600",
        **outside_env,
    }
    for p in procs:
        p.env.update(env)
        p.start()
    try:
        took = wait_ready(procs)
        for p in procs:
            print(f"    {p.name:<15} ready in {took[p.name]:.0f} s (:{p.port})", flush=True)
        topics = [*OBSERVATION_TOPIC.values(), PERSONAL_OBSERVATIONS, DEADLETTER]
        offsets = OffsetReader(s.kafka_bootstrap)
        before = offsets.ends(topics)
        since = datetime.now(UTC)
        print(f"4/5 publishing for {minutes:g} min", flush=True)
        pub = publish(sim, minutes=minutes, host=s.mqtt_host, port=s.mqtt_port, passwords=passwords)
        print("5/5 draining and accounting", flush=True)
        sensor_ids = [x.sensor_id for x in sim.sensors]
        window = (sim.start.to_pydatetime(), (sim.start + pd.Timedelta(hours=hours)).to_pydatetime())
        expected_rows = sum(len(sc.readings) for sc in sim.scenarios)
        keys = pd.concat([sc.readings[["sensor_id", "quantity", "time"]] for sc in sim.scenarios]).drop_duplicates()
        run_keys = (keys["sensor_id"].astype(str).tolist(), keys["quantity"].astype(str).tolist(),
                    list(pd.DatetimeIndex(keys["time"]).to_pydatetime()))
        # wait while the pipeline makes progress (a loaded machine is slow, not stuck); give up after
        # 120 s without any
        last, last_change = (-1, -1), time.monotonic()
        while time.monotonic() - last_change < 120:
            after = offsets.ends(topics)
            accepted = sum(after[t] - before[t] for t in [*OBSERVATION_TOPIC.values(), PERSONAL_OBSERVATIONS])
            dead = after[DEADLETTER] - before[DEADLETTER]
            db = _db_counts(s.db_url, sensor_ids, since, window, run_keys)
            stored = db["observation_rows"] + db["worker_rows"]
            if accepted + dead >= pub["total"] and stored >= expected_rows:
                break
            if (accepted + dead, stored) != last:
                last, last_change = (accepted + dead, stored), time.monotonic()
                print(f"    {accepted + dead:,}/{pub['total']:,} messages through the gateway, "
                      f"{stored:,}/{expected_rows:,} readings stored", flush=True)
            time.sleep(3)
        # detection is judged once the domain services (and then the notification service) have handled everything
        print("    waiting for the services to finish their windows", flush=True)
        settled = wait_settled(offsets, env["CITYOPS_KAFKA_GROUP_PREFIX"], procs[2:])
        after = offsets.ends(topics)
        accepted = sum(after[t] - before[t] for t in [*OBSERVATION_TOPIC.values(), PERSONAL_OBSERVATIONS])
        dead = after[DEADLETTER] - before[DEADLETTER]
        offsets.close()
        if not settled["settled"]:
            print(f"    WARNING: services still busy after {settled['seconds']:.0f} s: {settled['left']}", flush=True)
        db = _db_counts(s.db_url, sensor_ids, since, window, run_keys)
        dead -= db["other_dead_letters"]  # the gateway's refusals of this run's messages only
        metrics = {p.name: p.metrics() for p in procs}
        latency = {
            "sensor_publish_to_kafka": quantiles_from_metrics(metrics.get("ingest-gateway", ""),
                                                              "cityops_stage_latency_seconds",
                                                              {"stage": "publish_to_kafka"}),
            "sink_db_batch": quantiles_from_metrics(metrics.get("ingest-sink", ""), "cityops_stage_latency_seconds",
                                                    {"stage": "db_batch"}),
        }
        for p in procs[2:]:
            fam = quantiles_from_metrics(metrics[p.name], "cityops_stage_latency_seconds", {})
            if fam:
                latency[p.name] = fam
        scenarios = check_scenarios(sim, db["alerts"])
        notifications = _notifications(s.db_url, outside)
        summary = {
            "published": pub["published"], "published_total": pub["total"],
            "accepted_to_kafka": accepted, "dead_lettered": dead,
            "dead_letters_by_reason": db["dead_letters"],
            "readings_expected": expected_rows,
            "rows_stored": db["observation_rows"] + db["worker_rows"],
            "accounted": accepted + dead == pub["total"] and db["observation_rows"] + db["worker_rows"] == expected_rows,
            "latency": latency, "settled": settled, "alerts": len(db["alerts"]), "bulletins": db["bulletins"], "incidents": db["incidents"],
            "scenarios": scenarios, "alerts_stored_before_this_run": earlier,
            "notifications": notifications,
            "services": {p.name: p.port for p in procs},
            "wall_seconds": round(time.monotonic() - t_start, 1),
        }
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str, ensure_ascii=False))
        _extend_report(summary, sim, s, out_dir)
        print_summary(summary)
        return summary
    finally:
        if not keep_services:
            for p in reversed(procs):
                p.stop()
            outside.stop()


def _notifications(db_url: str, outside) -> dict[str, Any]:
    """Deliveries per channel with latency, escalations, and what the outside parties really received."""
    out: dict[str, Any] = {"received": outside.received()}
    try:
        from shared.notify.repository import delivery_summary_sync
    except ModuleNotFoundError:
        return out
    out.update(delivery_summary_sync(db_url))
    return out


def _extend_report(summary: dict, sim, s, out_dir: Path) -> None:
    """The HTML report with plots, where the report module exists."""
    try:
        report = importlib.import_module("shared.demo.report")
    except ModuleNotFoundError:
        return
    path = report.write(summary, sim, s, out_dir)
    summary["report"] = str(path)


def print_summary(x: dict) -> None:
    print("\n=== CityOps demo summary ===")
    print(f"messages published     {x['published_total']:>9,}  {x['published']}")
    print(f"accepted to Kafka      {x['accepted_to_kafka']:>9,}")
    print(f"dead-lettered          {x['dead_lettered']:>9,}  {x['dead_letters_by_reason']}")
    print(f"readings stored        {x['rows_stored']:>9,}  of {x['readings_expected']:,} expected")
    print(f"every message accounted for: {'YES' if x['accounted'] else 'NO'}")
    print("latency per stage (p50 / p99):")
    for stage, q in x["latency"].items():
        if q:
            print(f"  {stage:<26} {q['p50_s'] * 1000:>8.0f} ms / {q['p99_s'] * 1000:>8.0f} ms  (n={q['n']:,})")
    print(f"alerts raised          {x['alerts']:>9,}")
    if x.get("bulletins", {}).get("count"):
        b = x["bulletins"]
        print(f"weather bulletins      {b['count']:>9,}  ({b['districts']} districts x {b['hours']} hours)")
    for inc in x.get("incidents") or []:
        print(f"incident               {inc['kind']} opened {inc['opened_at'][:16]} (simulated), {inc['status']}; "
              f"report {inc['report'] or 'not written yet'}")
    n = x.get("notifications") or {}
    if n.get("channels") is not None:
        print("deliveries per channel (sent / dead, p50 / p99 latency):")
        for ch in n["channels"]:
            print(f"  {ch.get('channel', '?'):<10} {ch.get('sent', 0):>6} / {ch.get('dead', 0):<4} "
                  f"{ch.get('p50_ms') or 0:>7.0f} / {ch.get('p99_ms') or 0:>7.0f} ms")
        print(f"  escalated alerts: {len(n.get('escalations') or [])}; received outside: {n.get('received')}")
    print("injected scenarios:")
    for sc in x["scenarios"]:
        mark = {True: "DETECTED", False: "MISSED", None: "not checked"}[sc.get("detected")]
        extra = "".join(f", {k}={v}" for k, v in sc.items() if k not in ("domain", "scenario", "detected"))
        print(f"  [{mark:>11}] {sc['domain']}/{sc['scenario']}{extra}")
    if x.get("report"):
        print(f"report: {x['report']}")
    print(f"total wall time {x['wall_seconds']:.0f} s")
