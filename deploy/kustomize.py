"""A `kustomize build` equivalent for the features k8s/ uses, so CI validates what a cluster would get:
resources (files and bases), namespace, labels (pairs, metadata only), images (newName/newTag),
strategic-merge patches by name or by `target: {kind}` (maps merged, lists of named items merged by `name`), configMapGenerator
(files, no name hash). Anything else in a kustomization is refused, so a new feature cannot be
silently ignored by the validation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "patches", "labels", "images",
             "configMapGenerator", "generatorOptions"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


class KustomizeError(ValueError):
    pass


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def build(directory: Path) -> list[dict[str, Any]]:
    """Render the kustomization in `directory` into a list of manifests."""
    kfile = directory / "kustomization.yaml"
    if not kfile.exists():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported fields {sorted(unknown)}; extend deploy/kustomize.py")
    out: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = (directory / res).resolve()
        if not path.exists():
            raise KustomizeError(f"{kfile}: resource {res} does not exist")
        out += build(path) if path.is_dir() else load_docs(path)
    for gen in k.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            p = (directory / f).resolve()
            if not p.exists():
                raise KustomizeError(f"{kfile}: configMapGenerator {gen['name']}: file {f} does not exist")
            data[p.name] = p.read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    for patch in k.get("patches", []):
        for doc in load_docs(directory / patch["path"]):
            if "target" in patch:  # one patch for every resource of a kind
                sel = patch["target"]
                hits = [d for d in out if d["kind"] == sel["kind"]
                        and ("name" not in sel or d["metadata"]["name"] == sel["name"])]
                if not hits:
                    raise KustomizeError(f"{kfile}: patch {patch['path']} matches no {sel}")
                body = {key: v for key, v in doc.items() if key not in ("metadata", "apiVersion", "kind")}
                for d in hits:
                    merged = merge(d, body)
                    d.clear()
                    d.update(merged)
                continue
            target = _find(out, doc["kind"], doc["metadata"]["name"])
            if target is None:
                raise KustomizeError(f"{kfile}: patch {patch['path']} targets missing "
                                     f"{doc['kind']}/{doc['metadata']['name']}")
            merged = merge(target, doc)
            target.clear()
            target.update(merged)
    for lab in k.get("labels", []):
        for d in out:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(lab["pairs"])
    for img in k.get("images", []):
        for d in out:
            for c in _containers(d):
                name, _, _tag = c.get("image", "").partition(":")
                if name == img["name"]:
                    c["image"] = f"{img.get('newName', name)}:{img.get('newTag', _tag or 'latest')}"
    if "namespace" in k:
        for d in out:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return out


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get(
        "template", {}).get("spec", {})
    return [*pod.get("containers", []), *pod.get("initContainers", [])]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge, as far as k8s/ needs it: maps deep-merge, lists of maps with `name` merge by name,
    other lists are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x and "id" not in x for x in patch)
            and all(isinstance(x, dict) and "name" in x for x in base)):
        out_list = copy.deepcopy(base)
        for item in patch:
            existing = next((x for x in out_list if x["name"] == item["name"]), None)
            if existing is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[out_list.index(existing)] = merge(existing, item)
        return out_list
    return copy.deepcopy(patch)
