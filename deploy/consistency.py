"""Consistency of the deployment files with the code, on any copy of them (the tests break a copy):
settings each service reads vs what compose and k8s set; topics vs KafkaTopics; ACLs; autoscaling caps;
images vs Dockerfile targets. Each check returns a list of problems, each saying what to fix."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from deploy.kustomize import build
from deploy.services import IMAGE, REQUIRED_BY_DEPLOYMENT, SERVICES, env_name, required_fields, settings_class
from schemas.topics import KAFKA_TOPICS
from shared.settings import PlatformSettings

ROOT = Path(__file__).resolve().parents[1]


def discover_settings(root: Path = ROOT) -> dict[str, type[BaseSettings]]:
    """Every settings class of a service: services/*/settings.py and shared/*/settings.py (notify, api, ...)."""
    found: dict[str, type[BaseSettings]] = {}
    files = [*sorted((root / "services").glob("*/settings.py")), *sorted((root / "shared").glob("*/settings.py"))]
    for f in files:
        module = ".".join(f.relative_to(root).with_suffix("").parts)
        mod = importlib.import_module(module)
        for name, obj in vars(mod).items():
            if (isinstance(obj, type) and issubclass(obj, PlatformSettings) and obj is not PlatformSettings
                    and obj.__module__ == module):
                found[f"{module}:{name}"] = obj
    return found


def all_setting_env_names() -> set[str]:
    names = {env_name(PlatformSettings, f) for f in PlatformSettings.model_fields}
    for cls in discover_settings().values():
        names |= {env_name(cls, f) for f in cls.model_fields}
    return names


def _is_ours(image: str) -> bool:
    return image.split("/")[-1].split(":")[0] == IMAGE


def compose_env(compose_file: Path) -> dict[str, dict[str, str]]:
    data = yaml.safe_load(compose_file.read_text())
    return {n: dict(s.get("environment") or {}) for n, s in data["services"].items()}


def k8s_env(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Deployment/Job/CronJob name -> env names of its containers running the CityOps image."""
    out: dict[str, set[str]] = {}
    for d in docs:
        spec = d.get("spec", {})
        pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}).get("spec")
        if not pod:
            continue
        for c in pod.get("containers", []):
            if _is_ours(c.get("image", "")):
                out.setdefault(d["metadata"]["name"], set()).update(e["name"] for e in c.get("env", []))
    return out


def check_settings(compose_file: Path, k8s_dir: Path) -> list[str]:
    problems: list[str] = []
    discovered = discover_settings()
    used = {s.settings for s in SERVICES}
    for ref in discovered:
        if ref.split(":")[0] not in used:
            problems.append(f"{ref} is not the settings of any service in deploy/services.py: add the service "
                            "(or set `settings=` of its service) there and run `python -m deploy.generate`")
    known = all_setting_env_names()
    cenv = compose_env(compose_file)
    compose_data = yaml.safe_load(compose_file.read_text())
    kenv = k8s_env(build(k8s_dir))
    for svc in SERVICES:
        cls = settings_class(svc)
        needed = {env_name(cls, f) for f in required_fields(cls)}
        if cls.__module__ == svc.settings:
            needed |= {env_name(cls, f) for f in REQUIRED_BY_DEPLOYMENT.get(svc.name, ())}
        for where, have in (("docker-compose.yml", set(cenv.get(svc.name, {}))), ("k8s", kenv.get(svc.name, set()))):
            for name in sorted(needed - have):
                problems.append(f"{svc.name}: {name} is required by {svc.settings} but not set in {where}; "
                                "run `python -m deploy.generate`")
    for name, svc_env in cenv.items():
        if not _is_ours(compose_data["services"][name].get("image", "")):
            continue
        for var in svc_env:
            if var.startswith("CITYOPS_") and var not in known:
                problems.append(f"docker-compose.yml: {name} sets {var}, which no settings class reads")
    for name, names in kenv.items():
        for var in names:
            if var.startswith("CITYOPS_") and var not in known:
                problems.append(f"k8s: {name} sets {var}, which no settings class reads")
    return problems


def check_topics(k8s_dir: Path) -> list[str]:
    docs = build(k8s_dir)
    kt = {d["spec"]["topicName"]: d for d in docs if d["kind"] == "KafkaTopic"}
    problems = []
    for t in KAFKA_TOPICS:
        d = kt.get(t.name)
        if d is None:
            problems.append(f"topic {t.name} (schemas/topics.py) has no KafkaTopic; run `python -m deploy.generate`")
            continue
        if d["spec"]["partitions"] != t.partitions:
            problems.append(f"KafkaTopic {t.name}: {d['spec']['partitions']} partitions, schemas/topics.py says "
                            f"{t.partitions}")
        if int(d["spec"]["config"]["retention.ms"]) != t.retention_ms:
            problems.append(f"KafkaTopic {t.name}: retention.ms differs from schemas/topics.py ({t.retention_ms})")
    return problems


def dockerfile_targets(dockerfile: Path) -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile.read_text(), flags=re.M | re.I))


def check_images(compose_file: Path, dockerfile: Path) -> list[str]:
    targets = dockerfile_targets(dockerfile)
    data = yaml.safe_load(compose_file.read_text())
    problems = []
    for name, s in data["services"].items():
        build_spec = s.get("build")
        if build_spec is not None:
            target = build_spec.get("target") if isinstance(build_spec, dict) else None
            if target not in targets:
                problems.append(f"docker-compose.yml: {name} builds target {target!r}, the Dockerfile has "
                                f"{sorted(targets)}")
    ours = [n for n, s in data["services"].items() if _is_ours(s.get("image", ""))]
    if ours and not any("build" in data["services"][n] for n in ours):
        problems.append("docker-compose.yml: no service builds the cityops image")
    return problems


# TimescaleDB's Secret keys: a pod given one of them talks to the database
DB_SECRET_KEYS = {"db-url", "db-password", "grafana-db-password"}
DB_PORT = 5432


def _pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod template) of every workload."""
    out = []
    for d in docs:
        spec = d.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob") and template:
            out.append((f"{d['kind']}/{d['metadata']['name']}", template))
    return out


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if "matchExpressions" in selector:
        raise ValueError("a NetworkPolicy uses matchExpressions: teach deploy/consistency.py to read them")
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _ports(rule: dict[str, Any]) -> set[int] | None:
    """The ports a policy rule opens; None for all."""
    return {p["port"] for p in rule["ports"]} if rule.get("ports") else None


def _database(docs: list[dict[str, Any]]) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The database pod's labels and the NetworkPolicies that guard its ingress."""
    db = next(t for w, t in _pods(docs) if w == "StatefulSet/timescaledb")
    labels = db["metadata"].get("labels", {})
    guards = [d for d in docs if d["kind"] == "NetworkPolicy" and "Ingress" in d["spec"].get("policyTypes", [])
              and _selects(d["spec"]["podSelector"], labels)]
    return labels, guards


def database_clients(docs: list[dict[str, Any]]) -> set[str]:
    """Names of the workloads whose pods talk to TimescaleDB: given a database Secret key, or let out to it on
    5432 by their own NetworkPolicy."""
    db_labels, _ = _database(docs)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    out = set()
    for where, template in _pods(docs):
        labels = template["metadata"].get("labels", {})
        if _selects({"matchLabels": db_labels}, labels):
            continue  # the database itself
        containers = template["spec"].get("containers", [])
        keys = {e["valueFrom"]["secretKeyRef"]["key"] for c in containers for e in c.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        let_out = any(
            _selects(p["spec"]["podSelector"], labels) and any(
                any(_selects(peer.get("podSelector", {}), db_labels) for peer in rule.get("to", []))
                and (_ports(rule) is None or DB_PORT in _ports(rule))  # type: ignore[operator]
                for rule in p["spec"].get("egress", []))
            for p in policies)
        if keys & DB_SECRET_KEYS or let_out:
            out.add(where.split("/", 1)[1])
    return out


def check_database_access(docs: list[dict[str, Any]]) -> list[str]:
    """Every pod that talks to TimescaleDB is let in by the NetworkPolicies that guard it (same namespace)."""
    db_labels, guards = _database(docs)
    clients = database_clients(docs)
    problems = []
    for where, template in _pods(docs):
        if where.split("/", 1)[1] not in clients:
            continue
        labels = template["metadata"].get("labels", {})
        admitted = any(
            (_ports(rule) is None or DB_PORT in _ports(rule))  # type: ignore[operator]
            and ("from" not in rule or any("namespaceSelector" not in peer and "ipBlock" not in peer
                                           and _selects(peer.get("podSelector", {}), labels)
                                           for peer in rule["from"]))
            for g in guards for rule in g["spec"].get("ingress", []))
        if guards and not admitted:
            problems.append(f"{where}: its pods talk to TimescaleDB but its NetworkPolicy does not let them in "
                            f"(pod labels {labels}); give the pod template the label the policy admits")
    return problems
