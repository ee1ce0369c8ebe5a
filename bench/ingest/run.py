"""Ingest benchmark: the gateway against a raw MQTT→Kafka bridge, the sink against `psql \\copy`.

    python -m bench.ingest.run [--messages 40000]

Measured in one run on the same machine, so the ratios are what counts:
  - gateway throughput / raw bridge throughput (`mosquitto_sub -q 1 | kcat -P`, same messages, QoS 1);
  - sink rows/s / `psql \\copy` rows/s of the same rows;
  - p99 publish→Kafka latency at half the gateway's maximum rate;
  - gateway peak RSS.
Targets (issue 2): ≥ 30 %, ≥ 50 %, < 200 ms, < 250 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from bench.common import write_results
from shared import settings as settings_mod
from shared.demo.runner import OffsetReader, quantiles_from_metrics
from shared.stack import manager
from shared.stack.config import StackConfig
from shared.stack.mosquitto import Mosquitto

N_SENSORS = 200


def _sensors(gw: str):
    from schemas.registry import QuantitySpec, SensorSpec

    return [
        SensorSpec(sensor_id=f"bench-{gw}-{i}", domain="air", kind="lowcost_pm", gateway_id=gw, lat=30.2, lon=120.1,
                   district="d05", quantities={
                       "pm25": QuantitySpec(unit="ug/m3", valid_min=0, valid_max=1000, max_rate_per_h=500),
                       "temp": QuantitySpec(unit="degC", valid_min=-40, valid_max=60, max_rate_per_h=20)})
        for i in range(N_SENSORS)
    ]


def _payloads(gw: str, n: int, t0: datetime) -> list[tuple[str, bytes]]:
    out = []
    for k in range(n):
        sid = f"bench-{gw}-{k % N_SENSORS}"
        t = t0 + timedelta(seconds=k // N_SENSORS)
        out.append((f"city/{gw}/{sid}", json.dumps(
            {"sensor_id": sid, "time": t.isoformat(), "values": {"pm25": 20.0 + k % 13, "temp": 15.0 + k % 7 * 0.1}},
            separators=(",", ":")).encode()))
    return out


def _publisher(gw: str, mq: Mosquitto, port: int):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{gw}",
                    protocol=mqtt.MQTTv5)
    c.username_pw_set(gw, mq.password_for("gateways", gw))
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _publish(client, items, rate: float | None = None) -> float:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    t0 = time.perf_counter()
    infos = []
    for i, (topic, payload) in enumerate(items):
        if rate:
            due = t0 + i / rate
            d = due - time.perf_counter()
            if d > 0:
                time.sleep(d)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = ("published_at", repr(time.time()))
        infos.append(client.publish(topic, payload, qos=1, properties=props))
        if len(infos) > 2000:
            infos.pop(0).wait_for_publish(30)
    for info in infos:
        info.wait_for_publish(60)
    return time.perf_counter() - t0


_READER: dict[str, OffsetReader] = {}


def end_offsets(bootstrap: str, topics: list[str]) -> dict[str, int]:
    if bootstrap not in _READER:
        _READER[bootstrap] = OffsetReader(bootstrap)
    return _READER[bootstrap].ends(topics)


def _wait_offsets(bootstrap: str, topic: str, target: int, timeout: float = 600) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if end_offsets(bootstrap, [topic])[topic] >= target:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"{topic} did not reach offset {target}")


def bench_raw_bridge(s, mq, port, items, progress) -> float:
    """mosquitto_sub (QoS 1) piped into kcat -P: the least work a bridge can do."""
    topic = "cityops.bench.raw.v1"
    asyncio.run(_create_topic(s.kafka_bootstrap, topic))
    before = end_offsets(s.kafka_bootstrap, [topic])[topic]
    gw = items[0][0].split("/")[1]
    sub = subprocess.Popen(
        f"mosquitto_sub -h 127.0.0.1 -p {port} -u svc-monitor -P '{mq.password_for('services', 'svc-monitor')}' "
        f"-V mqttv5 -q 1 -t 'city/{gw}/#' -C {len(items)} | kcat -P -b {s.kafka_bootstrap} -t {topic} "
        f"-X acks=all -X enable.idempotence=true -X linger.ms=5",
        shell=True, stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    client = _publisher(gw, mq, port)
    progress(f"raw bridge: publishing {len(items):,} messages")
    t0 = time.monotonic()
    _publish(client, items)
    t_end = _wait_offsets(s.kafka_bootstrap, topic, before + len(items))
    sub.wait(60)
    client.disconnect()
    return len(items) / (t_end - t0)


async def _create_topic(bootstrap: str, topic: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic not in await admin.list_topics():
            await admin.create_topics([NewTopic(topic, 6, 1)])
    finally:
        await admin.close()


def _start(argv: list[str], port: int, env: dict, log: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "shared.cli", *argv, "--port", str(port)], env={**os.environ, **env},
                         stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return p
        except httpx.HTTPError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"{argv} exited: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    raise RuntimeError(f"{argv} not ready")


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=40_000)
    a = ap.parse_args(argv)
    say = lambda m: print(f"[bench ingest] {m}", file=sys.stderr, flush=True)  # noqa: E731
    if not shutil.which("kcat") or not shutil.which("mosquitto_sub"):
        print("bench ingest: needs kcat and mosquitto_sub (apt-get install -y kcat mosquitto-clients)")
        return 1
    manager.up(quiet=True)
    s = settings_mod.load()
    port = s.mqtt_port
    mq = Mosquitto(StackConfig.from_env())
    tok = secrets.token_hex(3)
    gw_raw, gw_g = f"gw-benchraw-{tok}", f"gw-bench-{tok}"
    mq.apply(gateways=[gw_raw, gw_g])
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    n = a.messages
    work = Path(tempfile.mkdtemp(prefix="cityops-bench-"))

    raw_rate = bench_raw_bridge(s, mq, port, _payloads(gw_raw, n, t0), say)
    say(f"raw bridge: {raw_rate:,.0f} msg/s")

    # fresh database for the gateway + sink
    dbname = f"bench_{tok}"
    with psycopg.connect(s.db_url, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{dbname}"')
    db_url = s.db_url.rsplit("/", 1)[0] + "/" + dbname
    from shared.storage.migrate import migrate
    from shared.storage.registry import upsert_sensors

    with psycopg.connect(db_url) as c:
        migrate(c)
        upsert_sensors(c, _sensors(gw_g))
    env = {"CITYOPS_DB_URL": db_url, "CITYOPS_INGEST_SHARE_GROUP": f"bench{tok}",
           "CITYOPS_INGEST_INSTANCE": f"bench{tok}", "CITYOPS_SINK_GROUP": f"bench-sink-{tok}",
           "CITYOPS_INGEST_SESSION_EXPIRY_S": "60"}
    gw_port, sink_port = 18901, 18902
    gateway = _start(["ingest", "gateway"], gw_port, env, work / "gateway.log")
    results: dict = {"messages": n}
    try:
        topic = "cityops.observations.air.v1"
        items = _payloads(gw_g, n, t0)
        before = end_offsets(s.kafka_bootstrap, [topic])[topic]
        client = _publisher(gw_g, mq, port)
        say(f"gateway: publishing {n:,} messages")
        t_pub0 = time.monotonic()
        _publish(client, items)
        t_end = _wait_offsets(s.kafka_bootstrap, topic, before + n)
        gw_rate = n / (t_end - t_pub0)
        say(f"gateway: {gw_rate:,.0f} msg/s")

        # latency at half the maximum rate
        m0 = httpx.get(f"http://127.0.0.1:{gw_port}/metrics").text
        lat_items = _payloads(gw_g, min(n, int(gw_rate * 0.5 * 20)), t0 + timedelta(hours=1))
        say(f"latency: {len(lat_items):,} messages at {gw_rate * 0.5:,.0f} msg/s")
        _publish(client, lat_items, rate=gw_rate * 0.5)
        _wait_offsets(s.kafka_bootstrap, topic, before + n + len(lat_items))
        m1 = httpx.get(f"http://127.0.0.1:{gw_port}/metrics").text
        client.disconnect()
        q0 = quantiles_from_metrics(m0, "cityops_stage_latency_seconds", {"stage": "publish_to_kafka"}) or {}
        q1 = _delta_quantiles(m0, m1)
        rss = _rss_peak_mb(gateway.pid)

        # sink: all of the above rows from Kafka into the fresh database
        rows_expected = (n + len(lat_items)) * 2
        say(f"sink: {rows_expected:,} rows")
        sink = _start(["ingest", "sink"], sink_port, env, work / "sink.log")
        # steady-state rate: from the first committed batch to the last row (start-up and group join excluded)
        first = None
        while True:
            with psycopg.connect(db_url) as c:
                got = c.execute("SELECT count(*) FROM observations").fetchone()[0]
            if got and first is None:
                first = (time.monotonic(), got)
            if got >= rows_expected:
                break
            time.sleep(0.1)
        sink_rate = (rows_expected - first[1]) / max(time.monotonic() - first[0], 1e-6)
        sink.terminate()
        sink.wait(30)

        # psql \copy of the same rows into an empty copy of the table
        with psycopg.connect(db_url) as c:
            rows = c.execute("SELECT time, sensor_id, quantity, value, unit, qc, domain, district, ingested_at "
                             "FROM observations").fetchall()
            c.execute("CREATE TABLE observations_copy (LIKE observations INCLUDING ALL)")
            c.commit()
        csv_path = work / "rows.csv"
        with open(csv_path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        psql = shutil.which("psql") or "psql"
        t_c0 = time.monotonic()
        subprocess.run([psql, db_url, "-v", "ON_ERROR_STOP=1", "-c",
                        f"\\copy observations_copy (time, sensor_id, quantity, value, unit, qc, domain, district, "
                        f"ingested_at) FROM '{csv_path}' CSV"], check=True, stdout=subprocess.DEVNULL)
        copy_rate = len(rows) / (time.monotonic() - t_c0)
        results.update({
            "raw_bridge_msg_s": raw_rate, "gateway_msg_s": gw_rate, "gateway_vs_raw": gw_rate / raw_rate,
            "sink_rows_s": sink_rate, "psql_copy_rows_s": copy_rate, "sink_vs_copy": sink_rate / copy_rate,
            "latency_half_rate": q1, "latency_full_rate_p99_s": q0.get("p99_s"), "gateway_rss_peak_mb": rss,
        })
    finally:
        gateway.terminate()
        gateway.wait(30)
        with psycopg.connect(s.db_url, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)
        for r in _READER.values():
            r.close()

    targets = {
        "gateway ≥ 30 % of raw bridge": results["gateway_vs_raw"] >= 0.30,
        "sink ≥ 50 % of psql copy": results["sink_vs_copy"] >= 0.50,
        "p99 publish→Kafka < 200 ms at half max rate": (results["latency_half_rate"] or {}).get("p99_s", 9) < 0.2,
        "gateway RSS < 250 MB": results["gateway_rss_peak_mb"] < 250,
    }
    results["targets_met"] = targets
    lat = results["latency_half_rate"] or {}
    md = "\n".join([
        "| measure | value | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
        f"| gateway throughput | {results['gateway_msg_s']:,.0f} msg/s | raw bridge {results['raw_bridge_msg_s']:,.0f} msg/s"
        f" | {results['gateway_vs_raw']:.2f} | ≥ 0.30 {'✅' if targets['gateway ≥ 30 % of raw bridge'] else '❌'} |",
        f"| sink | {results['sink_rows_s']:,.0f} rows/s | psql \\copy {results['psql_copy_rows_s']:,.0f} rows/s"
        f" | {results['sink_vs_copy']:.2f} | ≥ 0.50 {'✅' if targets['sink ≥ 50 % of psql copy'] else '❌'} |",
        f"| p99 publish→Kafka at half max rate | ≤ {lat.get('p99_s', float('nan')) * 1000:.0f} ms (bucket bound) | | |"
        f" < 200 ms {'✅' if targets['p99 publish→Kafka < 200 ms at half max rate'] else '❌'} |",
        f"| gateway peak RSS | {results['gateway_rss_peak_mb']:.0f} MB | | | < 250 MB "
        f"{'✅' if targets['gateway RSS < 250 MB'] else '❌'} |",
        "", f"{n:,} messages of 2 quantities from {N_SENSORS} sensors, QoS 1, one gateway process.",
    ])
    write_results("ingest", results, md)
    print(md)
    return 0


def _delta_quantiles(m0: str, m1: str) -> dict | None:
    """p50/p99 of the histogram observations that happened between two scrapes."""
    from prometheus_client.parser import text_string_to_metric_families

    def buckets(text):
        out = {}
        for fam in text_string_to_metric_families(text):
            if fam.name != "cityops_stage_latency_seconds":
                continue
            for smp in fam.samples:
                if smp.labels.get("stage") == "publish_to_kafka" and smp.name.endswith("_bucket"):
                    out[float(smp.labels["le"])] = smp.value
        return out

    b0, b1 = buckets(m0), buckets(m1)
    diff = sorted((le, b1[le] - b0.get(le, 0)) for le in b1)
    if not diff or diff[-1][1] == 0:
        return None
    total = diff[-1][1]

    def q(p):
        return next(le for le, c in diff if c >= p * total)

    return {"p50_s": q(0.5), "p99_s": q(0.99), "n": int(total)}


if __name__ == "__main__":
    sys.exit(main())
