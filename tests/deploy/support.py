"""Offline checks of deploy/: schemas vendored in deploy/schemas, a kustomize render."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
KUBERNETES = DEPLOY / "kubernetes"

# (apiVersion, kind) → vendored schema (only the kinds we use)
KUBERNETES_SCHEMAS = {
    ("apps/v1", "Deployment"): "kubernetes/deployment-apps-v1.json",
    ("v1", "Service"): "kubernetes/service-v1.json",
    ("v1", "ConfigMap"): "kubernetes/configmap-v1.json",
    ("v1", "Secret"): "kubernetes/secret-v1.json",
    ("v1", "Namespace"): "kubernetes/namespace-v1.json",
    ("batch/v1", "Job"): "kubernetes/job-batch-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "kubernetes/poddisruptionbudget-policy-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): (
        "kubernetes/horizontalpodautoscaler-autoscaling-v2.json"
    ),
    ("keda.sh/v1alpha1", "ScaledObject"): "crds/scaledobject-keda-v1alpha1.json",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "crds/rabbitmqcluster-rabbitmq-v1beta1.json",
    ("postgresql.cnpg.io/v1", "Cluster"): "crds/cluster-postgresql-cnpg-v1.json",
}


def load_schema(relative: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / relative).read_text())
    return schema


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft7Validator)
    validator = validator_class(schema, format_checker=None)
    return [
        f"{'/'.join(str(p) for p in error.absolute_path)}: {error.message[:200]}"
        for error in validator.iter_errors(document)
    ]


def kubernetes_errors(documents: list[dict[str, Any]]) -> list[str]:
    found = []
    for document in documents:
        key = (document.get("apiVersion"), document.get("kind"))
        name = document.get("metadata", {}).get("name")
        relative = KUBERNETES_SCHEMAS.get(key)
        if relative is None:
            found.append(f"{key} {name}: no vendored schema for this kind")
            continue
        found += [f"{key[1]} {name}: {e}" for e in schema_errors(load_schema(relative), document)]
    return found


# --- rendering ----------------------------------------------------------------------


def render(directory: Path) -> list[dict[str, Any]]:
    """The kustomization's output: ``kubectl kustomize`` when available, else our merge."""
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run(
            [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RenderError(result.stderr)
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    return merge_render(directory)


class RenderError(Exception):
    pass


def merge_render(directory: Path) -> list[dict[str, Any]]:
    """A small stand-in for kustomize: resources, patches (strategic merge), labels, namespace.

    Covers what deploy/kubernetes uses (no generators, no JSON patches).
    """
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            documents += merge_render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        for overlay in yaml.safe_load_all((directory / patch["path"]).read_text()):
            target = _find(documents, overlay["kind"], overlay["metadata"]["name"])
            _merge(target, overlay)
    for labels in kustomization.get("labels", []):
        for document in documents:
            document.setdefault("metadata", {}).setdefault("labels", {}).update(labels["pairs"])
    namespace = kustomization.get("namespace")
    if namespace:
        for document in documents:
            if document["kind"] != "Namespace":
                document.setdefault("metadata", {})["namespace"] = namespace
    return documents


def _find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for document in documents:
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise RenderError(f"patch target {kind}/{name} not found")


def _merge(target: Any, patch: Any) -> Any:
    if isinstance(target, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            target[key] = _merge(target[key], value) if key in target else value
        return target
    if (
        isinstance(target, list)
        and isinstance(patch, list)
        and all(isinstance(i, dict) and "name" in i for i in target + patch)
    ):
        by_name = {item["name"]: item for item in target}
        for item in patch:
            if item["name"] in by_name:
                _merge(by_name[item["name"]], item)
            else:
                target.append(item)
        return target
    return patch
