"""NetworkPolicies: default deny, only the gateway reachable through the ingress controller, the
DICOM port from the hospital network only, and the needed paths."""

from __future__ import annotations

import ipaddress

import pytest

from tests.deploy.loaders import containers, find, pod_specs, pod_template
from tests.deploy.network_policy import Peer, ingress_allowed, outside

NAMESPACE = "cxr-pneumonia"
INGRESS_CONTROLLER = Peer({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
PROMETHEUS = Peer({"app.kubernetes.io/name": "prometheus"}, "monitoring")


def app(name: str) -> Peer:
    return Peer({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cxr-pneumonia"},
                NAMESPACE)


NEEDED = [
    (INGRESS_CONTROLLER, app("gateway"), 8443),
    (PROMETHEUS, app("gateway"), 9102),  # the gateway's internal metrics port
    (app("worker"), app("tf-serving"), 8500),
    (app("trainer-worker"), app("tf-serving"), 8500),  # publish waits for the new version
    (app("trainer-bootstrap"), app("tf-serving"), 8500),
    (app("gateway"), app("tf-serving"), 8501),
    (PROMETHEUS, app("tf-serving"), 8501),
    (PROMETHEUS, app("worker"), 9100),
    (PROMETHEUS, app("pacs"), 9103),  # the DICOM node's metrics port
    (PROMETHEUS, app("pacs-sender"), 9104),  # the report sender's
    (app("trainer-worker"), app("mlflow"), 5000),
    (app("trainer-bootstrap"), app("mlflow"), 5000),
    (app("gateway"), app("mlflow"), 5000),
]
NEEDED_IN_DEV = [
    (app("gateway"), app("redis"), 6379),
    (app("worker"), app("redis"), 6379),
    (app("trainer-worker"), app("redis"), 6379),
    (app("beat"), app("redis"), 6379),
    (app("mlflow"), app("postgres"), 5432),
    (app("gateway"), app("minio"), 9000),
    (app("worker"), app("minio"), 9000),
    (app("reconciler"), app("redis"), 6379),
    (app("reconciler"), app("minio"), 9000),
    (app("mlflow"), app("minio"), 9000),
    (app("minio-init"), app("minio"), 9000),
    (app("pacs"), app("redis"), 6379),
    (app("pacs-sender"), app("redis"), 6379),
    (app("pacs"), app("minio"), 9000),
    (app("pacs-sender"), app("minio"), 9000),
]
REFUSED = [
    (INGRESS_CONTROLLER, app("gateway"), 9102),  # metrics never through the ingress
    (PROMETHEUS, app("gateway"), 8443),  # nor on the public port
    (INGRESS_CONTROLLER, app("tf-serving"), 8500),
    (INGRESS_CONTROLLER, app("mlflow"), 5000),
    (app("beat"), app("tf-serving"), 8500),
    (app("worker"), app("mlflow"), 5000),
    (app("gateway"), app("postgres"), 5432),
    (app("beat"), app("minio"), 9000),
    (app("pacs-sender"), app("tf-serving"), 8500),
    (app("pacs"), app("mlflow"), 5000),
    (app("reconciler"), app("tf-serving"), 8500),  # it sends tasks; the workers predict
    (app("reconciler"), app("mlflow"), 5000),
    (INGRESS_CONTROLLER, app("pacs"), 9103),  # the metrics ports admit Prometheus only
    (app("gateway"), app("pacs"), 9103),
    (app("worker"), app("pacs-sender"), 9104),
]
# Nothing in the cluster sends images to the DICOM port.
DICOM_CALLERS_REFUSED = [INGRESS_CONTROLLER, PROMETHEUS, app("gateway"), app("worker"),
                         app("pacs-sender")]
DICOM_PORT = 11112


def policies(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


def test_ingress_is_denied_by_default(overlay_objects):
    default = [p for p in policies(overlay_objects)
               if p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"]
               and not p["spec"].get("ingress")]
    assert len(default) == 1


@pytest.mark.parametrize(("source", "target", "port"), NEEDED)
def test_needed_paths_are_open(rendered, source, target, port):
    for objects in rendered.values():
        assert ingress_allowed(policies(objects), source, target, port)


@pytest.mark.parametrize(("source", "target", "port"), NEEDED_IN_DEV)
def test_dev_dependencies_are_reachable_by_their_clients(rendered, source, target, port):
    assert ingress_allowed(policies(rendered["dev"]), source, target, port)


@pytest.mark.parametrize(("source", "target", "port"), REFUSED)
def test_other_paths_are_closed(rendered, source, target, port):
    assert not ingress_allowed(policies(rendered["dev"]), source, target, port)


def secret_holders(objects: list[dict], secret: str) -> set[str]:
    """The app names of the pods that get a key of `secret` in their environment."""
    holders = set()
    for owner, pod in pod_specs(objects):
        for container in containers(pod):
            for env in container.get("env", []):
                if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret:
                    holders.add(pod_template(owner)["metadata"]["labels"]["app.kubernetes.io/name"])
    return holders


@pytest.mark.parametrize(("secret", "service", "port"),
                         [("cxr-redis", "redis", 6379), ("cxr-s3", "minio", 9000)])
def test_dev_lets_every_pod_given_a_services_credentials_reach_it(rendered, secret, service,
                                                                  port):
    """A pod handed the Redis URL or the S3 keys (e.g. a new CronJob) can use them in dev; a pod
    without them cannot reach the service."""
    objects = rendered["dev"]
    holders = secret_holders(objects, secret)
    assert {"worker", "reconciler"} <= holders
    names = {pod_template(owner)["metadata"]["labels"]["app.kubernetes.io/name"]
             for owner, _ in pod_specs(objects)} - {service}
    for name in names:
        reachable = ingress_allowed(policies(objects), app(name), app(service), port)
        assert reachable == (name in holders), f"{name} -> {service}:{port}"


def test_only_the_gateways_public_port_is_reachable_from_the_ingress_controller(overlay_objects):
    for owner, pod in pod_specs(overlay_objects):
        labels = pod_template(owner)["metadata"]["labels"]
        target = Peer(labels, owner["metadata"]["namespace"])
        for container in pod["containers"]:
            for port in container.get("ports", []):
                reachable = ingress_allowed(policies(overlay_objects), INGRESS_CONTROLLER, target,
                                            port["containerPort"])
                public = labels["app.kubernetes.io/name"] == "gateway" and port["name"] == "https"
                assert reachable == public, \
                    f"{owner['metadata']['name']}:{port['containerPort']}"


def hospital_hosts(objects: list[dict]) -> list[str]:
    """One address inside each CIDR the DICOM load balancer accepts."""
    ranges = find(objects, "Service", "pacs")["spec"]["loadBalancerSourceRanges"]
    return [str(next(ipaddress.ip_network(cidr).hosts())) for cidr in ranges]


def test_the_evaluator_reads_ip_blocks():
    """ipBlock admits addresses in the CIDR but not in `except`, and never a pod by its labels."""
    policy = {"metadata": {"name": "p", "namespace": NAMESPACE}, "spec": {
        "podSelector": {}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                     "ports": [{"port": DICOM_PORT}]}]}}
    target = app("pacs")
    assert ingress_allowed([policy], outside("10.2.3.4"), target, DICOM_PORT)
    assert not ingress_allowed([policy], outside("10.2.3.4"), target, 8443)
    assert not ingress_allowed([policy], outside("10.1.2.3"), target, DICOM_PORT)
    assert not ingress_allowed([policy], outside("192.168.1.1"), target, DICOM_PORT)
    assert not ingress_allowed([policy], app("gateway"), target, DICOM_PORT)


def test_the_hospital_network_reaches_the_dicom_port_and_nothing_else(rendered):
    objects = rendered["prod"]
    for host in hospital_hosts(objects):
        for owner, pod in pod_specs(objects):
            labels = pod_template(owner)["metadata"]["labels"]
            target = Peer(labels, owner["metadata"]["namespace"])
            for container in pod["containers"]:
                for port in container.get("ports", []):
                    reachable = ingress_allowed(policies(objects), outside(host), target,
                                                port["containerPort"])
                    expected = (labels["app.kubernetes.io/name"] == "pacs"
                                and port["containerPort"] == DICOM_PORT)
                    assert reachable == expected, f"{host} -> {owner['metadata']['name']}:{port}"


def test_the_dicom_port_refuses_other_networks_and_the_cluster(overlay_objects):
    target = app("pacs")
    for stranger in ("203.0.113.9", "0.0.0.1"):  # nowhere near a hospital range
        assert not ingress_allowed(policies(overlay_objects), outside(stranger), target,
                                   DICOM_PORT)
    for caller in DICOM_CALLERS_REFUSED:
        assert not ingress_allowed(policies(overlay_objects), caller, target, DICOM_PORT)
