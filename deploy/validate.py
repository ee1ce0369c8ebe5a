"""Offline validation: Kubernetes objects against the Kubernetes schemas (kubernetes-validate), custom
resources against their vendored CRD schemas (k8s/crds/), the compose file against the Compose
Specification schema (deploy/schemas/). No cluster, no Docker, no network."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "k8s/crds"
K8S_VERSION = "1.33.0"  # the oldest Kubernetes the manifests must run on


@cache
def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema, from every vendored CRD, plus KEDA's ScaledObject."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in sorted(CRDS.rglob("*.yaml")):
        for crd in yaml.safe_load_all(f.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for v in crd["spec"]["versions"]:
                out[(f"{group}/{v['name']}", kind)] = v["schema"]["openAPIV3Schema"]
    keda = json.loads((CRDS / "keda-2.16.1/scaledobject.schema.json").read_text())
    out[("keda.sh/v1alpha1", "ScaledObject")] = keda
    return out


def validate_manifest(doc: dict[str, Any]) -> list[str]:
    """Errors of one manifest, each naming kind/name and the path; empty when valid."""
    where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    key = (doc.get("apiVersion", ""), doc.get("kind", ""))
    schema = _crd_schemas().get(key)
    if schema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{where}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{where}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {key[0]} {key[1]}: vendor its CRD under k8s/crds/"]
    return []


def validate_compose(data: dict[str, Any]) -> list[str]:
    schema = json.loads((ROOT / "deploy/schemas/compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(data)]
