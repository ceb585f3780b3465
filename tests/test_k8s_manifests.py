"""deploy/k8s/: every manifest is valid against the Kubernetes schemas (offline, with
kubernetes-validate), and the manifests keep what operating Scorecast relies on: the HPA on
connections per gateway pod through the prometheus-adapter rule, a PodDisruptionBudget, a drain
that fits in the termination grace period, probes on every long-running container, gateways
spread over nodes, and MongoDB as a replica set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource of every manifest by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in MANIFESTS:
        for doc in documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_resource_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        # Raises ValidationError (with the offending path) on a schema violation; strict also
        # rejects fields the schema does not know (a typo such as `readinessprobe`).
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]


def test_the_hpa_scales_the_gateway_on_the_connection_metric_the_gateway_exports() -> None:
    found = resources()
    hpa = found[("HorizontalPodAutoscaler", "gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    # The adapter rule turns the gateway's own series into that per-pod metric.
    rules = yaml.safe_load(found[("ConfigMap", "prometheus-adapter-scorecast-rules")]["data"]["rules.yaml"])
    (rule,) = [r for r in rules["rules"] if r["name"]["as"] == name]
    series = re.match(r"(\w+)\{", rule["seriesQuery"])
    assert series is not None
    metrics_source = (K8S.parent.parent / "gateway" / "metrics.py").read_text()
    assert f'"{series.group(1)}"' in metrics_source, "the rule must read a series the gateway exports"
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


def test_gateways_drain_within_their_grace_period_and_are_spread_and_protected() -> None:
    found = resources()
    gateway = found[("Deployment", "gateway")]
    pod = gateway["spec"]["template"]["spec"]
    (container,) = containers(gateway)
    config = found[("ConfigMap", "scorecast-config")]["data"]
    pre_stop_s = int(container["lifecycle"]["preStop"]["sleep"]["seconds"])
    drain_s = float(config["DRAIN_TIMEOUT_S"])
    shutdown_s = float(config["GRACEFUL_SHUTDOWN_TIMEOUT_S"])
    # preStop runs first, then SIGTERM: the drain and uvicorn's own shutdown must fit before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > pre_stop_s + max(drain_s, shutdown_s)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    selectors = [c["labelSelector"]["matchLabels"] for c in pod["topologySpreadConstraints"]]
    assert all(s == gateway["spec"]["selector"]["matchLabels"] for s in selectors)
    pdb = found[("PodDisruptionBudget", "gateway")]
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")


def test_every_serving_container_has_readiness_and_liveness_probes() -> None:
    for (kind, name), doc in resources().items():
        if kind not in ("Deployment", "StatefulSet"):
            continue
        for container in containers(doc):
            if not container.get("ports"):
                continue
            assert "readinessProbe" in container, f"{kind}/{name} has no readiness probe"
            assert "livenessProbe" in container, f"{kind}/{name} has no liveness probe"


def test_mongodb_is_a_replica_set_that_the_processes_are_pointed_at() -> None:
    found = resources()
    mongo = found[("StatefulSet", "mongo")]
    assert mongo["spec"]["replicas"] >= 3
    (container,) = containers(mongo)
    args = container["args"]
    replica_set = args[args.index("--replSet") + 1]
    url = found[("ConfigMap", "scorecast-config")]["data"]["MONGO_URL"]
    assert f"replicaSet={replica_set}" in url
    init = found[("Job", "mongo-rs-init")]
    script = " ".join(containers(init)[0]["command"])
    assert "rs.initiate" in script and replica_set in script


def test_worker_and_flusher_are_scraped_and_probed_on_their_configured_operations_port() -> None:
    found = resources()
    config = found[("ConfigMap", "scorecast-config")]["data"]
    assert config["METRICS_HOST"] == "0.0.0.0"
    assert config["LOG_FORMAT"] == "json"
    for name, setting in (
        ("ingest-worker", "WORKER_METRICS_PORT"),
        ("ingest-flusher", "FLUSHER_METRICS_PORT"),
    ):
        deployment = found[("Deployment", name)]
        port = int(config[setting])
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
        (container,) = containers(deployment)
        (declared,) = container["ports"]
        assert declared == {"name": "metrics", "containerPort": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
