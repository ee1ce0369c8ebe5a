"""Deployment files validated without a cluster or Docker: generated files current, every rendered
manifest valid against the Kubernetes / CRD schemas, the compose file against the Compose spec."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from deploy.generate import outputs
from deploy.kustomize import KustomizeError, build
from deploy.validate import validate_compose, validate_manifest

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = ["dev", "prod"]


def test_generated_files_are_current():
    stale = [p.relative_to(ROOT).as_posix() for p, text in outputs().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"run `python -m deploy.generate`: {stale}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_manifest_is_valid(overlay):
    docs = build(ROOT / "k8s/overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser", "ScaledObject",
            "StatefulSet", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    errors = [e for d in docs for e in validate_manifest(d)]
    assert errors == []
    assert all(d["metadata"].get("namespace") == f"cityops{'-dev' if overlay == 'dev' else ''}" for d in docs)


def test_overlays_patch_what_they_say():
    dev = {(d["kind"], d["metadata"]["name"]): d for d in build(ROOT / "k8s/overlays/dev")}
    prod = {(d["kind"], d["metadata"]["name"]): d for d in build(ROOT / "k8s/overlays/prod")}
    assert dev[("KafkaNodePool", "dual-role")]["spec"]["replicas"] == 1
    assert prod[("KafkaNodePool", "dual-role")]["spec"]["replicas"] == 3
    assert prod[("StatefulSet", "ingest-gateway")]["spec"]["replicas"] == 2
    assert dev[("StatefulSet", "ingest-gateway")]["spec"]["replicas"] == 1
    image = prod[("Deployment", "notify")]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.city.example/cityops:1.0.0"
    # a patch replaces the map it names and keeps the rest of the object
    assert dev[("Kafka", "cityops")]["spec"]["kafka"]["listeners"]


def _deployment():
    return copy.deepcopy(next(d for d in build(ROOT / "k8s/overlays/prod") if d["kind"] == "Deployment"))


@pytest.mark.parametrize("breakage, expect", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"), "imagePullPolicyy"),
    (lambda d: d["spec"].update(replicas="two"), "replicas"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="eighty"), "eighty"),
])
def test_kubernetes_schema_catches_a_broken_deployment(breakage, expect):
    d = _deployment()
    breakage(d)
    errors = validate_manifest(d)
    assert errors and expect in " ".join(errors)


@pytest.mark.parametrize("kind, breakage, expect", [
    ("KafkaTopic", lambda d: d["spec"].update(partitions="six"), "partitions"),
    ("KafkaUser", lambda d: d["spec"]["authorization"]["acls"][0]["resource"].update(type="table"), "table"),
    ("KafkaNodePool", lambda d: d["spec"].update(roles=["zookeeper"]), "zookeeper"),
    ("ScaledObject", lambda d: d["spec"].update(maxReplicaCount="many"), "many"),
    ("ScaledObject", lambda d: d["spec"].pop("scaleTargetRef"), "scaleTargetRef"),
])
def test_crd_schemas_catch_broken_custom_resources(kind, breakage, expect):
    d = copy.deepcopy(next(x for x in build(ROOT / "k8s/overlays/prod") if x["kind"] == kind))
    breakage(d)
    errors = validate_manifest(d)
    assert errors and expect in " ".join(errors)


def test_compose_file_is_valid_and_the_schema_bites():
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert validate_compose(data) == []
    broken = copy.deepcopy(data)
    broken["services"]["notify"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["ingest-sink"]["healthcheck"]["intervall"] = "5s"
    errors = " ".join(validate_compose(broken))
    assert "service_ready" in errors and "intervall" in errors


def test_compose_shape():
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = data["services"]
    for name, s in services.items():
        assert "healthcheck" in s or s.get("restart") == "on-failure", f"{name}: no healthcheck and not a one-shot job"
        for dep, cond in (s.get("depends_on") or {}).items():
            want = "service_healthy" if "healthcheck" in services[dep] else "service_completed_successfully"
            assert cond["condition"] == want, f"{name} -> {dep}"
    text = (ROOT / "docker-compose.yml").read_text()
    assert "${DB_PASSWORD:?" in text and "${NOTIFY_SESSION_SECRET:?" in text
    assert set(data["volumes"]) >= {"kafka-data", "timescaledb-data", "mosquitto-data", "grafana-data"}


def test_kustomize_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplacements: []\n")
    with pytest.raises(KustomizeError, match="replacements"):
        build(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(KustomizeError, match="missing.yaml"):
        build(tmp_path)


def test_dockerfile_is_multi_stage_non_root_and_copies_what_exists():
    import fnmatch
    import re

    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, flags=re.M)
    assert [s for _, s in stages] == ["build", "runtime"]
    final = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER\s+10001", final, flags=re.M), "the runtime stage must not run as root"
    assert "build-essential" not in final, "compilers stay in the build stage"
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for src in sources:
            src = src.rstrip("/")
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
            assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"
    # every module the compose jobs run is in the image
    for job in ("deploy.mqtt", "deploy.topics"):
        assert (ROOT / (job.replace(".", "/") + ".py")).exists()
