"""The KEDA ScaledObject for ssd, checked offline like the other manifests.

kubernetes-validate knows Kubernetes' own kinds, not KEDA's: the ScaledObject's
structure is checked here against KEDA's documented specification (keda.sh/v1alpha1
ScaledObject: its keys, their types, metadata values as strings), and cross-checked
against the manifests it works with (the Deployment it scales, the CPU HPA it takes
over) and the worker metrics it reads, as a real worker's registry names them. The
part of it that is Kubernetes' own, the HPA behavior, goes through kubernetes-validate.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_validate import utils as kubernetes_validate
from prometheus_client import generate_latest

from server.config import load_settings
from server.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "docker" / "k8s"
KEDA = K8S / "keda"
K8S_VERSION = "1.30.0"

# What keda.sh/v1alpha1 ScaledObject accepts: a key's type, or the keys of a mapping.
Schema = dict[str, Any]
TRIGGER: Schema = {
    "type": str,
    "name": str,
    "metadata": "string map",
    "authenticationRef": {"name": str, "kind": str},
    "metricType": str,
    "useCachedMetrics": bool,
}
SCALED_OBJECT: Schema = {
    "apiVersion": str,
    "kind": str,
    "metadata": {
        "name": str,
        "namespace": str,
        "labels": "string map",
        "annotations": "string map",
    },
    "spec": {
        "scaleTargetRef": {
            "apiVersion": str,
            "kind": str,
            "name": str,
            "envSourceContainerName": str,
        },
        "pollingInterval": int,
        "cooldownPeriod": int,
        "initialCooldownPeriod": int,
        "idleReplicaCount": int,
        "minReplicaCount": int,
        "maxReplicaCount": int,
        "fallback": {"failureThreshold": int, "replicas": int},
        "advanced": {
            "restoreToOriginalReplicaCount": bool,
            "horizontalPodAutoscalerConfig": {"name": str, "behavior": dict},
            "scalingModifiers": {
                "target": str,
                "activationTarget": str,
                "metricType": str,
                "formula": str,
            },
        },
        "triggers": [TRIGGER],
    },
}
REQUIRED = {("spec",), ("spec", "scaleTargetRef", "name"), ("spec", "triggers")}
PROMETHEUS_METADATA = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
}


def structure_errors(value: Any, schema: Any, where: str = "") -> list[str]:
    """Where ``value`` does not have the shape ``schema`` gives; [] if it has."""
    if schema == "string map":
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [
            f"{where}.{k}: expected a string" for k, v in value.items() if not isinstance(v, str)
        ]
    if isinstance(schema, list):
        if not isinstance(value, list) or not value:
            return [f"{where}: expected a list of one or more"]
        return [
            e
            for i, item in enumerate(value)
            for e in structure_errors(item, schema[0], f"{where}[{i}]")
        ]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        unknown = [f"{where}.{k}: unknown key" for k in value if k not in schema]
        return unknown + [
            e
            for k, v in value.items()
            if k in schema
            for e in structure_errors(v, schema[k], f"{where}.{k}")
        ]
    if schema is int and isinstance(value, bool):
        return [f"{where}: expected a whole number"]
    return [] if isinstance(value, schema) else [f"{where}: expected {schema.__name__}"]


def scaled_object_errors(document: dict[str, Any]) -> list[str]:
    errors = structure_errors(document, SCALED_OBJECT)
    if (document.get("apiVersion"), document.get("kind")) != ("keda.sh/v1alpha1", "ScaledObject"):
        errors.append("not a keda.sh/v1alpha1 ScaledObject")
    for path in REQUIRED:
        node: Any = document
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            errors.append(f"{'.'.join(path)}: required")
    for index, trigger in enumerate(document.get("spec", {}).get("triggers") or []):
        if trigger.get("type") == "prometheus":
            metadata = trigger.get("metadata", {})
            missing = {"serverAddress", "query", "threshold"} - set(metadata)
            unknown = set(metadata) - PROMETHEUS_METADATA
            errors += [f"triggers[{index}].metadata.{k}: required" for k in sorted(missing)]
            errors += [f"triggers[{index}].metadata.{k}: unknown" for k in sorted(unknown)]
    return errors


def documents(folder: Path) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def the_scaled_object() -> dict[str, Any]:
    (scaled,) = [doc for doc in documents(KEDA) if doc["kind"] == "ScaledObject"]
    return scaled


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in documents(K8S) if doc["kind"] == kind}


def test_the_scaled_object_has_the_structure_keda_accepts() -> None:
    assert scaled_object_errors(the_scaled_object()) == []


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda d: d["spec"].update(minReplicas=2), "spec.minReplicas: unknown key"),
        (
            lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=2),
            "threshold: expected a string",
        ),
        (lambda d: d["spec"]["triggers"][0]["metadata"].pop("query"), "metadata.query: required"),
        (lambda d: d["spec"]["scaleTargetRef"].pop("name"), "spec.scaleTargetRef.name: required"),
        (lambda d: d["spec"].update(maxReplicaCount="10"), "spec.maxReplicaCount: expected int"),
    ],
)
def test_the_structure_check_finds_a_mistake(change: Any, complaint: str) -> None:
    broken = copy.deepcopy(the_scaled_object())
    change(broken)
    assert any(complaint in error for error in scaled_object_errors(broken)), scaled_object_errors(
        broken
    )


def test_it_scales_the_ssd_deployment_in_its_namespace_never_to_zero() -> None:
    scaled = the_scaled_object()
    (namespace,) = of_kind("Namespace")
    assert scaled["metadata"]["namespace"] == namespace
    target = scaled["spec"]["scaleTargetRef"]
    assert (
        target.get("kind", "Deployment") == "Deployment"
        and target.get("apiVersion", "apps/v1") == "apps/v1"
    )
    deployment = of_kind("Deployment")[target["name"]]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["worker", "ssd"]
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"
    spec = scaled["spec"]
    assert "idleReplicaCount" not in spec and spec["minReplicaCount"] >= 1, "scale to zero is off"
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]


def test_it_takes_over_the_cpu_hpa_rather_than_running_beside_it() -> None:
    scaled = the_scaled_object()
    (hpa,) = [
        h
        for h in of_kind("HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == scaled["spec"]["scaleTargetRef"]["name"]
    ]
    assert (
        scaled["metadata"]["annotations"]["scaledobject.keda.sh/transfer-hpa-ownership"] == "true"
    )
    config = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]
    assert config["name"] == hpa["metadata"]["name"]
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (
        hpa["spec"]["minReplicas"],
        hpa["spec"]["maxReplicas"],
    ), "the same range, whichever autoscaler runs"
    # The behavior goes to the HPA KEDA makes: valid as Kubernetes' own.
    as_hpa = copy.deepcopy(hpa)
    as_hpa["spec"]["behavior"] = config["behavior"]
    kubernetes_validate.validate(as_hpa, K8S_VERSION, strict=True)


def worker_families() -> dict[str, str]:
    """A real worker's metric families and their types, as its registry exposes them."""
    counts = {"running": lambda: 0.0, "waiting": lambda: 0.0, "uploading": lambda: 0.0}
    text = generate_latest(WorkerMetrics("ssd", counts).registry).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))


def test_its_triggers_read_the_ssd_workers_queue_and_calls_in_flight() -> None:
    triggers = the_scaled_object()["spec"]["triggers"]
    families = worker_families()
    queried = {}
    for trigger in triggers:
        assert trigger["type"] == "prometheus"
        query = trigger["metadata"]["query"]
        (metric,) = re.findall(r"\bdcf_\w+", query)
        assert families.get(metric) == "gauge", f"{metric}: not a gauge of the worker"
        assert '{function="ssd"}' in query, query
        assert float(trigger["metadata"]["threshold"]) > 0
        queried[metric] = float(trigger["metadata"]["threshold"])
    assert set(queried) == {"dcf_worker_queue_depth", "dcf_worker_calls_in_flight"}
    # More pods come before every slot of every pod is busy.
    ssd = load_settings(ROOT / "docker" / "functions.yaml", environ={}).resolve("ssd")
    assert queried["dcf_worker_calls_in_flight"] < ssd.max_concurrency


def test_the_folder_stays_out_of_a_plain_apply() -> None:
    # `kubectl apply -f docker/k8s/` reads the folder's own files only: a cluster
    # without KEDA applies it cleanly; tests/deploy validates every file there.
    assert KEDA.parent == K8S and not list(K8S.glob("*keda*.yaml"))
    assert all(doc["kind"] != "ScaledObject" for doc in documents(K8S))


def test_the_ssd_pods_serve_the_metrics_it_reads_where_prometheus_looks() -> None:
    """The worker serves its metrics on DCF_WORKER_METRICS_PORT: that must be the pod's
    port named metrics, the one its scrape annotation and the NetworkPolicy name."""
    deployment = next(
        doc
        for doc in yaml.safe_load_all((K8S / "41-ssd.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
    )
    pod = deployment["spec"]["template"]
    (worker,) = pod["spec"]["containers"]
    env = {item["name"]: item.get("value") for item in worker["env"]}
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert int(env["DCF_WORKER_METRICS_PORT"]) == ports["metrics"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
