"""The Kubernetes manifests, checked here without a cluster: rendered by `kubectl
kustomize`, validated against Kubernetes' own schemas, and their parts fitting
together (probes, the gateway's ConfigMap, the ServiceMonitor's selectors, the
gateway config's engines naming the vLLM pods)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUBERNETES = "1.32.0"


def test_k8s_gateway_config_points_at_the_vllm_pods() -> None:
    k8s = load_settings(DEPLOY / "k8s" / "gateway-config.yaml")
    rendered = _kustomize()
    statefulset = next(d for d in rendered if d["kind"] == "StatefulSet")
    pods = {
        f"{statefulset['metadata']['name']}-{i}" for i in range(statefulset["spec"]["replicas"])
    }
    assert {e.options["url"].split("//")[1].split(".")[0] for e in k8s.engines} == pods


def _kustomize() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is missing: `make test` installs it (scripts/system-deps.sh).")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s")], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_k8s_manifests_validate_against_kubernetes_schemas() -> None:
    import kubernetes_validate

    documents = _kustomize()
    kinds = {d["kind"] for d in documents}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler"} <= kinds
    for document in documents:
        if document["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked against the Services below
        kubernetes_validate.validate(document, KUBERNETES, strict=True)
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_k8s_probes_monitoring_and_config_fit_together() -> None:
    documents = _kustomize()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], []).append(document)
    gateway = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    config_map = by_kind["ConfigMap"][0]
    volumes = gateway["spec"]["template"]["spec"]["volumes"]
    assert any(
        v.get("configMap", {}).get("name") == config_map["metadata"]["name"] for v in volumes
    )
    assert yaml.safe_load(config_map["data"]["switchyard.yaml"])["engines"]
    monitor = by_kind["ServiceMonitor"][0]
    wanted = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    ports = {p["name"] for s in by_kind["Service"] for p in s["spec"]["ports"]}
    labelled = {
        s["metadata"].get("labels", {}).get("app.kubernetes.io/name") for s in by_kind["Service"]
    }
    assert wanted <= labelled
    assert monitor["spec"]["endpoints"][0]["port"] in ports
    hpa = by_kind["HorizontalPodAutoscaler"][0]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
