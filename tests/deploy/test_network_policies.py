"""NetworkPolicies: default deny, only the gateway reachable from outside, and the needed paths."""

from __future__ import annotations

import pytest

from tests.deploy.loaders import pod_specs
from tests.deploy.network_policy import Peer, ingress_allowed

NAMESPACE = "cxr-pneumonia"
INGRESS_CONTROLLER = Peer({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx")
PROMETHEUS = Peer({"app.kubernetes.io/name": "prometheus"}, "monitoring")


def app(name: str) -> Peer:
    return Peer({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "cxr-pneumonia"},
                NAMESPACE)


NEEDED = [
    (INGRESS_CONTROLLER, app("gateway"), 8443),
    (PROMETHEUS, app("gateway"), 8443),
    (app("worker"), app("tf-serving"), 8500),
    (app("trainer-worker"), app("tf-serving"), 8500),  # publish waits for the new version
    (app("trainer-bootstrap"), app("tf-serving"), 8500),
    (app("gateway"), app("tf-serving"), 8501),
    (PROMETHEUS, app("tf-serving"), 8501),
    (PROMETHEUS, app("worker"), 9100),
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
    (app("mlflow"), app("minio"), 9000),
    (app("minio-init"), app("minio"), 9000),
]
REFUSED = [
    (INGRESS_CONTROLLER, app("tf-serving"), 8500),
    (INGRESS_CONTROLLER, app("mlflow"), 5000),
    (app("beat"), app("tf-serving"), 8500),
    (app("worker"), app("mlflow"), 5000),
    (app("gateway"), app("postgres"), 5432),
    (app("beat"), app("minio"), 9000),
]


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


def test_only_the_gateway_is_reachable_from_the_ingress_controller(overlay_objects):
    for owner, pod in pod_specs(overlay_objects):
        labels = owner["spec"]["template"]["metadata"]["labels"]
        target = Peer(labels, owner["metadata"]["namespace"])
        for container in pod["containers"]:
            for port in container.get("ports", []):
                reachable = ingress_allowed(policies(overlay_objects), INGRESS_CONTROLLER, target,
                                            port["containerPort"])
                assert reachable == (labels["app.kubernetes.io/name"] == "gateway"), \
                    f"{owner['metadata']['name']}:{port['containerPort']}"
