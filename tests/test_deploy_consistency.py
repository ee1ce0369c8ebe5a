"""The deployment agrees with the code: settings, topics, ACLs, autoscaling caps, images; and the checks
catch a missing setting or topic in a broken copy of the files."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml

from deploy.consistency import (
    check_database_access,
    check_images,
    check_settings,
    check_topics,
    database_clients,
    discover_settings,
)
from deploy.generate import OUTSIDE_READER
from deploy.kustomize import build
from deploy.mqtt import write as write_mqtt
from deploy.services import LOOPBACK_ONLY, SERVICES, settings_class
from schemas.topics import KAFKA_TOPICS

ROOT = Path(__file__).resolve().parents[1]
PROD = ROOT / "k8s/overlays/prod"


@pytest.fixture(scope="module")
def prod():
    return build(PROD)


def _workload(docs, name):
    """A service's workload: its Deployment, or the StatefulSet of a service whose pods keep their names."""
    return next(d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name)


def test_settings_are_discovered_and_set_everywhere():
    assert {"services.ingest.settings:IngestSettings", "shared.notify.settings:NotifySettings",
            "shared.api.settings:ApiSettings"} <= set(discover_settings())
    assert check_settings(ROOT / "docker-compose.yml", PROD) == []
    assert check_settings(ROOT / "docker-compose.yml", ROOT / "k8s/overlays/dev") == []


def test_topics_and_images_match(prod):
    assert check_topics(PROD) == []
    assert check_images(ROOT / "docker-compose.yml", ROOT / "Dockerfile") == []


@pytest.fixture
def copy_of_files(tmp_path):
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    shutil.copytree(ROOT / "k8s", tmp_path / "k8s", ignore=shutil.ignore_patterns("crds"))
    # the base's configMapGenerator reads ../../deploy and ../../provisioning
    (tmp_path / "deploy").symlink_to(ROOT / "deploy")
    (tmp_path / "provisioning").symlink_to(ROOT / "provisioning")
    return tmp_path


def test_a_missing_setting_is_caught_in_compose_and_k8s(copy_of_files):
    compose = copy_of_files / "docker-compose.yml"
    data = yaml.safe_load(compose.read_text())
    del data["services"]["ingest-sink"]["environment"]["CITYOPS_DB_URL"]
    data["services"]["water"]["environment"]["CITYOPS_WATER_LEAK_MODEL"] = "x"
    compose.write_text(yaml.safe_dump(data))
    notify = copy_of_files / "k8s/base/services/notify.yaml"
    docs = list(yaml.safe_load_all(notify.read_text()))
    env = docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    docs[0]["spec"]["template"]["spec"]["containers"][0]["env"] = [
        e for e in env if e["name"] != "CITYOPS_KAFKA_BOOTSTRAP"]
    notify.write_text(yaml.safe_dump_all(docs))
    problems = "\n".join(check_settings(compose, copy_of_files / "k8s/overlays/prod"))
    assert "ingest-sink: CITYOPS_DB_URL is required" in problems and "docker-compose.yml" in problems
    assert "notify: CITYOPS_KAFKA_BOOTSTRAP is required" in problems and "not set in k8s" in problems
    assert "water sets CITYOPS_WATER_LEAK_MODEL, which no settings class reads" in problems


def test_a_missing_topic_is_caught(copy_of_files):
    topics = copy_of_files / "k8s/base/kafka/topics.yaml"
    docs = [d for d in yaml.safe_load_all(topics.read_text()) if d]
    kept = [d for d in docs if d["spec"]["topicName"] != "cityops.alerts.v1"]
    next(d for d in kept if d["spec"]["topicName"] == "cityops.air.grid.v1")["spec"]["partitions"] = 12
    topics.write_text(yaml.safe_dump_all(kept))
    problems = "\n".join(check_topics(copy_of_files / "k8s/overlays/prod"))
    assert "cityops.alerts.v1 (schemas/topics.py) has no KafkaTopic" in problems
    assert "cityops.air.grid.v1: 12 partitions" in problems


def test_a_missing_dockerfile_target_is_caught(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim AS build\nFROM build AS app\n")
    problems = check_images(ROOT / "docker-compose.yml", tmp_path / "Dockerfile")
    assert problems and "'runtime'" in problems[0]


def _acls(prod, user):
    u = next(d for d in prod if d["kind"] == "KafkaUser" and d["metadata"]["name"] == user)
    return u["spec"]["authorization"]["acls"]


def test_kafka_acls_give_each_service_only_its_topics(prod):
    access = {t.name: t.access for t in KAFKA_TOPICS}
    outside = _acls(prod, OUTSIDE_READER)
    topics = {a["resource"]["name"] for a in outside if a["resource"]["type"] == "topic"}
    assert topics == {n for n, a in access.items() if a == "public"}
    assert all(set(a["operations"]) <= {"Read", "Describe"} for a in outside)
    users = {d["metadata"]["name"] for d in prod if d["kind"] == "KafkaUser"}
    assert users == {s.name for s in SERVICES if s.consumes or s.produces} | {OUTSIDE_READER}
    for svc in (s for s in SERVICES if s.consumes or s.produces):
        acls = _acls(prod, svc.name)
        granted = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"}
        assert granted == set(svc.consumes) | set(svc.produces), svc.name
        reads = {a["resource"]["name"] for a in acls if "Read" in a["operations"] and a["resource"]["type"] == "topic"}
        assert reads == set(svc.consumes), svc.name
    readers_of_personal = {s.name for s in SERVICES if "cityops.observations.personal.restricted.v1" in s.consumes}
    assert readers_of_personal == {"ingest-sink", "emergency"}


def test_autoscaling_never_exceeds_partitions(prod):
    parts = {t.name: t.partitions for t in KAFKA_TOPICS}
    scaled = {d["metadata"]["name"]: d for d in prod if d["kind"] == "ScaledObject"}
    assert set(scaled) == {s.name for s in SERVICES if s.autoscale}
    for name, so in scaled.items():
        inputs = [t["metadata"]["topic"] for t in so["spec"]["triggers"]]
        assert set(inputs) == set(next(s for s in SERVICES if s.name == name).consumes)
        assert so["spec"]["maxReplicaCount"] <= min(parts[t] for t in inputs)
        deployment = _workload(prod, name)
        assert deployment["spec"]["replicas"] <= so["spec"]["maxReplicaCount"]


def test_every_service_has_probes_limits_policy_and_budget(prod):
    by = {(d["kind"], d["metadata"]["name"]) for d in prod}
    for svc in SERVICES:
        assert {("Service", svc.name), ("PodDisruptionBudget", svc.name), ("NetworkPolicy", svc.name)} <= by
        pod = _workload(prod, svc.name)["spec"]["template"]["spec"]
        c = pod["containers"][0]
        if svc.name in LOOPBACK_ONLY:
            assert "/readyz" in " ".join(c["readinessProbe"]["exec"]["command"])
            assert "/healthz" in " ".join(c["livenessProbe"]["exec"]["command"])
        else:
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
        assert all("value" not in e or "DB_URL" not in e["name"] for e in c["env"]), "secrets come from a Secret"


def test_mqtt_credentials_keep_passwords_and_follow_the_acl_model(tmp_path):
    first = write_mqtt(tmp_path, ["gw-01"], ["p-7"])
    again = write_mqtt(tmp_path, ["gw-01", "gw-02"], [])
    assert again["gateways"]["gw-01"] == first["gateways"]["gw-01"] and "gw-02" in again["gateways"]
    acl = (tmp_path / "acl").read_text()
    assert "user gw-02\ntopic write city/gw-02/#" in acl and "user p-7\ntopic read field/p-7/#" in acl
    assert oct((tmp_path / "credentials.json").stat().st_mode & 0o777) == "0o600"
    assert (tmp_path / "passwd").read_text().count("$7$") == len(again["services"]) + 2 + 1


@pytest.mark.parametrize("svc", SERVICES, ids=lambda s: s.name)
def test_each_service_listens_where_its_probes_and_service_reach_it(svc):
    host_fields = [f for f in settings_class(svc).model_fields if f.endswith("_host") and not f.startswith("mqtt")
                   and "smtp" not in f]
    if svc.name in LOOPBACK_ONLY:
        assert not host_fields, (f"{svc.settings} now has {host_fields}: set it to 0.0.0.0 in `overrides` of "
                                 f"{svc.name} in deploy/services.py, drop it from LOOPBACK_ONLY, regenerate")
    else:
        assert any(svc.overrides.get(f) == "0.0.0.0" for f in host_fields), (
            f"{svc.name} would listen on loopback only: set its host setting to 0.0.0.0 in deploy/services.py")


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_topic_replication_fits_the_brokers(overlay):
    docs = build(ROOT / "k8s/overlays" / overlay)
    brokers = sum(d["spec"]["replicas"] for d in docs
                  if d["kind"] == "KafkaNodePool" and "broker" in d["spec"]["roles"])
    min_isr = next(d for d in docs if d["kind"] == "Kafka")["spec"]["kafka"]["config"]["min.insync.replicas"]
    for t in (d for d in docs if d["kind"] == "KafkaTopic"):
        assert min_isr <= t["spec"]["replicas"] <= brokers, t["metadata"]["name"]


def test_every_kafka_client_logs_in_as_its_own_kafka_user_over_tls(prod):
    """Services reach Kafka only on the SCRAM/TLS listener, as the KafkaUser whose ACLs the test above checks;
    the plain listener is for KEDA's namespace alone."""
    from shared.kafka import security_options

    users = {d["metadata"]["name"] for d in prod if d["kind"] == "KafkaUser"}
    cluster = next(d for d in prod if d["kind"] == "Kafka")
    listeners = {lst["name"]: lst for lst in cluster["spec"]["kafka"]["listeners"]}
    assert listeners["scram"]["tls"] and listeners["scram"]["authentication"]["type"] == "scram-sha-512"
    assert [p.get("namespaceSelector") for p in listeners["plain"]["networkPolicyPeers"]] == [
        {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}]
    config = next(d for d in prod if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("cityops-platform"))
    assert config["data"]["CITYOPS_KAFKA_BOOTSTRAP"].endswith(f":{listeners['scram']['port']}")
    for svc in (s for s in SERVICES if s.consumes or s.produces):
        pod = _workload(prod, svc.name)["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["CITYOPS_KAFKA_USERNAME"]["value"] == svc.name and svc.name in users
        assert env["CITYOPS_KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": svc.name, "key": "password"}
        opts = security_options({k: e.get("value", "from-secret") for k, e in env.items()
                                 if k != "CITYOPS_KAFKA_SSL_CAFILE"})  # mounted in the pod, absent here
        assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_plain_username"] == svc.name
        ca = env["CITYOPS_KAFKA_SSL_CAFILE"]["value"]
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert ca.startswith(mounts["kafka-ca"] + "/"), svc.name
        ports = {p["port"] for rule in next(d for d in prod if d["kind"] == "NetworkPolicy"
                                           and d["metadata"]["name"].endswith(svc.name))["spec"]["egress"]
                 for p in rule.get("ports", [])}
        assert listeners["scram"]["port"] in ports and listeners["plain"]["port"] not in ports, svc.name


# --- Kafka access and autoscaling against the consumers the code really starts ----------------------------

# How each consuming service starts its Kafka consumers: the app's own build() (StreamProcessor), or the
# sink's and notify's consume loop (shared.kafka.consumer). The gateway only produces; the API has no Kafka.
NO_CONSUMER = {"ingest-gateway", "api"}
DB_STAND_IN = "postgresql://deploy-test@127.0.0.1:9/none"


class _Subscribed(Exception):
    """Raised by the recording consumer's start(): the group and topics are known, nothing else is needed."""


def _pod_env(docs: list[dict], name: str, pod_name: str | None = None) -> dict[str, str]:
    """The environment the manifests give a service's container (in the pod `pod_name`); Secrets as stand-ins."""
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cityops-platform")["data"]
    env: dict[str, str] = {}
    for e in _workload(docs, name)["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            env[e["name"]] = config[e["valueFrom"]["configMapKeyRef"]["key"]]
        elif "fieldRef" in e["valueFrom"]:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", e
            assert pod_name, f"{name}: {e['name']} is the pod's name: say which pod"
            env[e["name"]] = pod_name
        else:
            env[e["name"]] = DB_STAND_IN if e["name"].endswith("DB_URL") else "stand-in-secret"
    return env


def _start_consumers(svc, settings) -> None:
    import asyncio
    import importlib

    from shared.service import Readiness

    if svc.name == "ingest-sink":
        from services.ingest.sink import ObservationSink

        with pytest.raises(_Subscribed):
            asyncio.run(ObservationSink(settings, Readiness("db", "kafka")).run(asyncio.Event()))
    elif svc.name == "notify":
        from shared.notify.handlers import NotifyService

        with pytest.raises(_Subscribed):
            asyncio.run(NotifyService(settings).consume(asyncio.Event()))
    else:
        importlib.import_module(svc.module).build(settings, Readiness("db", "kafka"))


@pytest.fixture(scope="module")
def code_consumers(prod, tmp_path_factory):
    """Service name -> [(consumer group, topics)] as each service's own code subscribes, configured with
    exactly the environment its Deployment gets."""
    import os

    from shared import kafka
    from shared.stream import StreamProcessor

    seen: list[tuple[str, tuple[str, ...]]] = []
    original_init = StreamProcessor.__init__

    def recording_init(self, name, bootstrap, topics, group, *args, **kw):
        seen.append((group, tuple(topics)))
        original_init(self, name, bootstrap, topics, group, *args, **kw)

    class RecordingConsumer:
        async def start(self):
            raise _Subscribed

        async def stop(self):
            return None

    def recording_consumer(bootstrap, group, *topics, **kw):
        seen.append((group, tuple(topics)))
        return RecordingConsumer()

    from deploy.generate import ACCOUNTS_DIR

    # the cityops-accounts Secret the pods mount: the shipped files without their demo mark, as a city's own are
    # (the pods are not given CITYOPS_ALLOW_DEMO_ACCOUNTS; a demo file would be refused)
    accounts = tmp_path_factory.mktemp("accounts")
    for src in (ROOT / "config/notify/roster.yaml", ROOT / "shared/api/consumers.yaml"):
        data = yaml.safe_load(src.read_text(encoding="utf-8"))
        data.pop("demo")
        (accounts / src.name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")

    out: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StreamProcessor, "__init__", recording_init)
        mp.setattr(kafka, "consumer", recording_consumer)
        for svc in SERVICES:
            if svc.name in NO_CONSUMER:
                continue
            for var in [v for v in os.environ if v.startswith("CITYOPS_")]:
                mp.delenv(var)
            for var, value in _pod_env(prod, svc.name).items():
                mp.setenv(var, value.replace(ACCOUNTS_DIR, str(accounts)))
            mp.setenv("CITYOPS_STATE_DIR", str(tmp_path_factory.mktemp(svc.name)))
            seen.clear()
            _start_consumers(svc, settings_class(svc)(_env_file=None))
            out[svc.name] = list(seen)
    return out


def _allows(acls: list[dict], rtype: str, name: str, op: str) -> bool:
    for a in acls:
        r = a["resource"]
        if r["type"] != rtype or op not in a["operations"]:
            continue
        if r["name"] == name or (r.get("patternType") == "prefix" and name.startswith(r["name"])):
            return True
    return False


def test_each_kafka_user_reads_exactly_the_topics_and_groups_its_code_consumes(prod, code_consumers):
    """Before, the KafkaUsers allowed groups no service uses (`cityops-air`, not `cityops-air-stream`;
    `cityops-weather`, not `cityops-weather-signals`) and left out topics the code reads (air and water the
    nowcasts, water the weather observations, emergency the alerts, observations and nowcasts of weather):
    on the cluster every stream service was refused at its first poll. Now each user may read exactly what
    its code subscribes to, under the groups its code joins."""
    assert {n for n, used in code_consumers.items() if used} == {s.name for s in SERVICES if s.consumes}
    problems = []
    for name, used in code_consumers.items():
        acls = _acls(prod, name)
        for group, topics in used:
            if not _allows(acls, "group", group, "Read"):
                problems.append(f"{name}: group {group} not allowed")
            problems += [f"{name}: may not read {t}" for t in topics if not _allows(acls, "topic", t, "Read")]
        readable = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic" and "Read" in a["operations"]}
        problems += [f"{name}: may read {t}, which it never reads" for t in readable - {t for _, ts in used for t in ts}]
    assert problems == []


def test_autoscaling_watches_only_groups_and_topics_the_code_consumes(prod, code_consumers):
    """Before, KEDA watched groups that never exist (`cityops-air`, `cityops-emergency`, ...) and notify's
    group on the task-updates topic it only writes; with `offsetResetPolicy: earliest` a missing group's lag
    is the whole topic, so the services sat at their maximum replica count. Now every trigger names a
    (group, topic) the service's code consumes."""
    for so in (d for d in prod if d["kind"] == "ScaledObject"):
        name = so["metadata"]["name"]
        consumed = {(g, t) for g, topics in code_consumers[name] for t in topics}
        watched = {(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in so["spec"]["triggers"]}
        assert watched <= consumed, (name, watched - consumed)
        assert watched == consumed, (name, consumed - watched)


KEEP_THE_WHOLE_CITY = {"air-quality", "weather", "water", "emergency"}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_services_that_keep_the_whole_city_in_memory_run_one_replica(overlay):
    """Before, air, weather and emergency scaled to 3 replicas and water to 6: each replica saw only its
    partitions' sensors (the water balance never complete, the grid and the incidents built from part of
    the city). Now they run one replica, are not autoscaled and are replaced, not rolled (a rolling update
    would run two pods in the group for a while)."""
    docs = build(ROOT / "k8s/overlays" / overlay)
    scaled = {d["metadata"]["name"] for d in docs if d["kind"] == "ScaledObject"}
    assert not scaled & KEEP_THE_WHOLE_CITY
    for name in KEEP_THE_WHOLE_CITY:
        dep = _workload(docs, name)
        assert dep["kind"] == "Deployment", name
        assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}, name
    assert {s.name for s in SERVICES if s.one_replica} == KEEP_THE_WHOLE_CITY


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_pod_that_uses_the_database_is_let_in_by_its_policy(overlay):
    """Before, TimescaleDB's NetworkPolicy let in only pods labelled `app.kubernetes.io/part-of: cityops`,
    and Grafana's pod had no such label (kustomize's `labels` marks the objects, not their pod templates):
    every dashboard panel failed to connect. Now every pod that talks to the database is let in."""
    docs = build(ROOT / "k8s/overlays" / overlay)
    clients = database_clients(docs)
    assert {"grafana", "cityops-migrate", "timescaledb-backup", *(s.name for s in SERVICES if s.needs_db)} <= clients
    assert check_database_access(docs) == []


def test_a_pod_the_database_policy_shuts_out_is_caught():
    docs = copy.deepcopy(build(PROD))
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "api")
    del api["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"]
    problems = check_database_access(docs)
    assert len(problems) == 1 and problems[0].startswith("Deployment/api:")


def test_gateways_and_field_phones_reach_mosquitto_from_outside(prod):
    """Before, Mosquitto's Service was ClusterIP although its NetworkPolicy (and the gateways, and field
    staff's phones) expect them to come in through a load balancer: nothing outside the cluster could
    connect. Now the Service is a LoadBalancer on the MQTT port the policy opens."""
    svc = next(d for d in prod if d["kind"] == "Service" and d["metadata"]["name"] == "mosquitto")
    assert svc["spec"]["type"] == "LoadBalancer"
    policy = next(d for d in prod if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "mosquitto")
    open_ports = {p["port"] for rule in policy["spec"]["ingress"] if "from" not in rule for p in rule["ports"]}
    assert {p["port"] for p in svc["spec"]["ports"]} == open_ports == {1883}


# --- the gateway's MQTT sessions ----------------------------------------------------------------------------

class _Connecting(Exception):
    """Raised by the recording MQTT client: the client id is known, no broker is needed."""


def _gateway_client_id(docs: list[dict], pod_name: str) -> str:
    """The MQTT client id the gateway's own code builds in the pod `pod_name`, from the manifests' environment."""
    import os

    import paho.mqtt.client as mqtt

    from services.ingest.handlers import Gateway
    from services.ingest.settings import IngestSettings
    from shared.service import Readiness

    seen: list[str] = []

    def recording_client(*args, client_id="", **kw):
        seen.append(client_id)
        raise _Connecting

    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("CITYOPS_")]:
            mp.delenv(var)
        for var, value in _pod_env(docs, "ingest-gateway", pod_name).items():
            mp.setenv(var, value)
        mp.setattr(mqtt, "Client", recording_client)
        with pytest.raises(_Connecting):
            Gateway(IngestSettings(_env_file=None), Readiness("mqtt"))._connect_mqtt()
    return seen[0]


@pytest.mark.parametrize("overlay, replicas", [("dev", 1), ("prod", 2)])
def test_each_gateway_pod_keeps_its_own_mqtt_session_under_its_name(overlay, replicas):
    """Before, the gateway was a Deployment that set no CITYOPS_INGEST_INSTANCE: its MQTT client id came from
    the pod's random name and its process id, so a pod replaced in a rollout opened a new persistent session,
    and what Mosquitto went on queueing in the old one (that pod's share of the shared subscription) expired
    unread after an hour. Now it is a StatefulSet: each pod's CITYOPS_INGEST_INSTANCE is its own name
    (ingest-gateway-0, -1, ...) from the downward API, the same after a restart; no two pods carry one name
    at a time, so no two replicas share a client id."""
    docs = build(ROOT / "k8s/overlays" / overlay)
    gateway = _workload(docs, "ingest-gateway")
    assert gateway["kind"] == "StatefulSet", "a Deployment's replacement pod has a new name, so a new session"
    assert gateway["spec"]["replicas"] == replicas
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CITYOPS_INGEST_INSTANCE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    pod_labels = gateway["spec"]["template"]["metadata"]["labels"]
    governing = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == gateway["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None" and governing["spec"]["selector"].items() <= pod_labels.items()
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        guard = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "ingest-gateway")
        selector = guard["spec"]["selector" if kind == "PodDisruptionBudget" else "podSelector"]
        assert selector["matchLabels"].items() <= pod_labels.items(), kind
    # a StatefulSet's pods are <name>-0 .. <name>-(replicas - 1)
    pods = [f"ingest-gateway-{i}" for i in range(replicas)]
    ids = [_gateway_client_id(docs, pod) for pod in pods]
    assert len(set(ids)) == replicas and all(cid.endswith(pod) for pod, cid in zip(pods, ids, strict=True)), ids


def test_compose_gives_the_gateway_a_lasting_mqtt_session():
    """Before, compose set no CITYOPS_INGEST_INSTANCE either: the client id came from the container's host name
    (its id), new whenever `up -d` recreated the container for an upgrade or a changed setting, and the readings
    queued for the old session expired unread. Now the gateway's one container has a fixed name."""
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["ingest-gateway"]
    instance = service["environment"].get("CITYOPS_INGEST_INSTANCE")
    assert instance and "${" not in instance
    assert service.get("deploy", {}).get("replicas", 1) == 1, "two containers would share one MQTT client id"
