"""The Kustomize tree: every overlay renders, validates against Kubernetes 1.31, and is hardened."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import ValidationError

from tests.deploy.loaders import K8S_DIR, containers, find, pod_specs, render

KUBERNETES_VERSION = "1.31"
SERVICE_USER = 10001
NAMESPACE = "cxr-pneumonia"
# Image names in base/ that each overlay maps to a registry and tag.
IMAGE_PLACEHOLDERS = {"cxr-gateway", "cxr-worker", "cxr-trainer", "cxr-pacs"}


def test_every_overlay_validates_strictly(overlay_objects):
    for obj in overlay_objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_base_renders_on_its_own():
    kinds = {obj["kind"] for obj in render(K8S_DIR / "base")}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "NetworkPolicy",
            "HorizontalPodAutoscaler", "Ingress"} <= kinds


def test_strict_validation_refuses_a_misspelt_field(rendered):
    """The validator is not vacuous: a typo in a real object is caught."""
    gateway = copy.deepcopy(find(rendered["prod"], "Deployment", "gateway"))
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSION, strict=True)


def test_everything_lands_in_one_namespace(overlay_objects):
    for obj in overlay_objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


def test_no_secret_carries_data(overlay_objects):
    for obj in overlay_objects:
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), obj["metadata"]["name"]
    for kustomization in K8S_DIR.rglob("kustomization.yaml"):
        assert "secretGenerator" not in kustomization.read_text(), kustomization
    for manifest in K8S_DIR.rglob("*.yaml"):  # rendered or not
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), manifest


def test_every_container_runs_as_the_service_user_with_nothing_extra(overlay_objects):
    for owner, pod in pod_specs(overlay_objects):
        where = f"{owner['kind']}/{owner['metadata']['name']}"
        assert pod.get("automountServiceAccountToken") is False, where
        pod_context = pod.get("securityContext", {})
        assert pod_context.get("runAsNonRoot") is True, where
        for container in containers(pod):
            context = container.get("securityContext", {})
            what = f"{where} container {container['name']}"
            assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, what
            assert context.get("runAsUser", pod_context.get("runAsUser")) == SERVICE_USER, what
            assert context.get("readOnlyRootFilesystem") is True, what
            assert context.get("allowPrivilegeEscalation") is False, what
            assert context.get("capabilities", {}).get("drop") == ["ALL"], what
            seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", what
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), what


def test_long_running_containers_have_probes(overlay_objects):
    for owner, pod in pod_specs(overlay_objects):
        if owner["kind"] != "Deployment":
            continue
        for container in pod["containers"]:
            assert "livenessProbe" in container, f"{owner['metadata']['name']}/{container['name']}"


def test_service_accounts_do_not_mount_tokens(overlay_objects):
    accounts = {o["metadata"]["name"]: o for o in overlay_objects if o["kind"] == "ServiceAccount"}
    for owner, pod in pod_specs(overlay_objects):
        account = pod.get("serviceAccountName")
        assert account in accounts, f"{owner['metadata']['name']} uses no account of its own"
    for account in accounts.values():
        assert account.get("automountServiceAccountToken") is False, account["metadata"]["name"]


def test_gateway_probes_readyz_and_healthz_over_https(overlay_objects):
    gateway = find(overlay_objects, "Deployment", "gateway")
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_services_select_pods_that_exist(overlay_objects):
    pod_labels = [
        obj["spec"]["template"]["metadata"]["labels"]
        for obj in overlay_objects if obj["kind"] == "Deployment"
    ]
    for service in (o for o in overlay_objects if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), \
            service["metadata"]["name"]


def test_exactly_one_beat_replaced_not_rolled(overlay_objects):
    beat = find(overlay_objects, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    scaled = {o["spec"]["scaleTargetRef"]["name"] for o in overlay_objects
              if o["kind"] == "HorizontalPodAutoscaler"}
    assert "beat" not in scaled


def test_workers_scale_with_an_autoscaler(overlay_objects):
    hpa = find(overlay_objects, "HorizontalPodAutoscaler", "worker")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "worker"}
    assert "replicas" not in find(overlay_objects, "Deployment", "worker")["spec"]


def test_ingress_terminates_tls_for_the_gateway_only(overlay_objects):
    ingresses = [o for o in overlay_objects if o["kind"] == "Ingress"]
    assert len(ingresses) == 1
    spec = ingresses[0]["spec"]
    assert spec["tls"] and spec["tls"][0]["secretName"]
    backends = {path["backend"]["service"]["name"]
                for rule in spec["rules"] for path in rule["http"]["paths"]}
    assert backends == {"gateway"}


@pytest.mark.parametrize("deployment", ["gateway", "pacs"])  # the API and the DICOM port
def test_prod_keeps_replicas_up_through_disruptions(rendered, deployment):
    budget = find(rendered["prod"], "PodDisruptionBudget", deployment)
    pods = find(rendered["prod"], "Deployment", deployment)
    assert budget["spec"]["selector"]["matchLabels"].items() <= \
        pods["spec"]["template"]["metadata"]["labels"].items()
    assert 0 < budget["spec"]["minAvailable"] < pods["spec"]["replicas"]


def test_images_are_pinned_and_placeholders_replaced(overlay_objects):
    for _, pod in pod_specs(overlay_objects):
        for container in containers(pod):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest", image
            assert name not in IMAGE_PLACEHOLDERS, f"{image}: placeholder not set by the overlay"


def documented_secrets() -> list[dict]:
    """The Secrets the `kubectl create secret` commands in docs/deployment.md create (values
    left as placeholders): what an operator following the guide ends up with."""
    text = (K8S_DIR.parents[1] / "docs" / "deployment.md").read_text().replace("\\\n", " ")
    secrets: dict[str, dict] = {}
    for kind, name, rest in re.findall(r"create secret (generic|tls) ([a-z0-9-]+)([^\n]*)", text):
        keys = ["tls.crt", "tls.key"] if kind == "tls" else re.findall(
            r"--from-literal=([A-Za-z0-9_.-]+)=", rest)
        secret = secrets.setdefault(name, {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "kubernetes.io/tls" if kind == "tls" else "Opaque", "data": {}})
        secret["data"].update(dict.fromkeys(keys, "cGxhY2Vob2xkZXI="))
    return list(secrets.values())


def referenced_secrets(objects: list[dict]) -> Iterator[tuple[str, str | None]]:
    """(secret name, key or None) for every reference in pods and ingresses."""
    for _, pod in pod_specs(objects):
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                yield volume["secret"]["secretName"], None
        for container in containers(pod):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    yield ref["name"], ref["key"]
    for ingress in (o for o in objects if o["kind"] == "Ingress"):
        for tls in ingress["spec"].get("tls", []):
            yield tls["secretName"], None


def test_the_documented_secret_commands_give_every_secret_the_pods_need(overlay_objects):
    documented = documented_secrets()
    for secret in documented:
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    keys = {secret["metadata"]["name"]: set(secret["data"]) for secret in documented}
    for name, key in referenced_secrets(overlay_objects):
        assert name in keys, f"docs/deployment.md does not say how to create {name}"
        assert key is None or key in keys[name], f"{name} is documented without key {key}"


def container_ports(objects: list[dict], labels_selector: dict) -> dict[str, int]:
    ports = {}
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        if labels_selector.items() <= obj["spec"]["template"]["metadata"]["labels"].items():
            for container in obj["spec"]["template"]["spec"]["containers"]:
                ports.update({p["name"]: p["containerPort"] for p in container.get("ports", [])})
    return ports


def test_service_ports_name_ports_their_pods_open(overlay_objects):
    for service in (o for o in overlay_objects if o["kind"] == "Service"):
        opened = container_ports(overlay_objects, service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert target in opened or target in opened.values(), \
                f"{service['metadata']['name']} targets {target}, pods open {opened}"


def test_processes_listen_on_the_ports_their_containers_declare(overlay_objects):
    def container(name: str) -> dict:
        pod = find(overlay_objects, "Deployment", name)["spec"]["template"]["spec"]
        return pod["containers"][0]

    def env(c: dict) -> dict:
        return {e["name"]: e.get("value") for e in c.get("env", [])}

    def ports(c: dict) -> dict:
        return {p["name"]: p["containerPort"] for p in c["ports"]}

    gateway, worker, serving = container("gateway"), container("worker"), container("tf-serving")
    assert int(env(gateway)["CXR_GATEWAY_PORT"]) == ports(gateway)["https"]
    assert int(env(worker)["CXR_WORKER_METRICS_PORT"]) == ports(worker)["metrics"]
    assert f"--port={ports(serving)['grpc']}" in serving["args"]
    assert f"--rest_api_port={ports(serving)['http']}" in serving["args"]
