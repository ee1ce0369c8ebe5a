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
