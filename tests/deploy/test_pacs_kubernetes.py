"""The DICOM node in Kubernetes: the receiver (C-STORE SCP) and the report sender run in every
overlay from the image compose builds, with the settings the service needs to start, one DICOM
port everywhere, and a load balancer and NetworkPolicy that admit the hospital network only."""

from __future__ import annotations

import ipaddress
import json
import os
import re

import pytest
from pydantic import ValidationError

from services.pacs.settings import PacsSettings
from tests.deploy.loaders import (
    IMAGE_TARGETS,
    K8S_DIR,
    find,
    image_target,
    load_compose,
    pod_specs,
    pod_template,
    render,
)
from tests.support.procs import REPO_ROOT

PACS_TARGET = "pacs"
DEFAULTED = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}")
DOCUMENTED_BUILD = re.compile(r"docker build --target (\S+)\s+-t (\S+) \.")


def resolve_defaults(value: str) -> str:
    """`${IMAGE_TAG:-0.1.0}` -> `0.1.0`: what compose uses when the variable is not set."""
    return DEFAULTED.sub(r"\1", value)


def container(objects: list[dict], deployment: str) -> dict:
    (only,) = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return only


def literal_env(c: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def compose_images() -> dict[str, set[str]]:
    """Dockerfile target -> the images compose builds from it."""
    images: dict[str, set[str]] = {}
    for service in load_compose()["services"].values():
        if "build" in service:
            images.setdefault(service["build"]["target"], set()).add(
                resolve_defaults(service["image"]))
    return images


def our_containers(objects: list[dict]) -> dict[tuple[str, str, str], str]:
    """(kind, owner, container) -> image, for containers running an image built here."""
    built = {image.split(":")[0] for images in compose_images().values() for image in images}
    found = {}
    for owner, pod in pod_specs(objects):
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            repository = c["image"].rpartition(":")[0]
            if any(repository == name or repository.endswith("/" + name) for name in built):
                found[(owner["kind"], owner["metadata"]["name"], c["name"])] = c["image"]
    return found


def test_compose_tags_each_image_after_its_target():
    images = compose_images()
    assert set(images) == set(IMAGE_TARGETS)
    for target, tags in images.items():
        assert len(tags) == 1, f"target {target} is tagged {tags}"
        assert next(iter(tags)).rpartition(":")[0] == f"cxr-pneumonia/{target}", tags


def test_dev_runs_the_images_compose_builds(rendered):
    built = set().union(*compose_images().values())
    ours = our_containers(rendered["dev"])
    assert set(ours.values()) <= built, set(ours.values()) - built
    pacs_image = compose_images()[PACS_TARGET]
    for deployment in ("pacs", "pacs-sender"):
        assert {ours[("Deployment", deployment, deployment)]} == pacs_image, deployment


def test_prod_pulls_the_same_images_from_the_registry(rendered):
    dev, prod = our_containers(rendered["dev"]), our_containers(rendered["prod"])
    assert dev.keys() == prod.keys()
    for where, image in prod.items():
        registry, _, path = image.partition("/")
        assert "." in registry and path == dev[where], f"{where}: {image} vs {dev[where]}"


def test_the_documented_builds_make_the_images_prod_pulls(rendered):
    text = (REPO_ROOT / "docs" / "deployment.md").read_text()
    documented = {tag: target for target, tag in DOCUMENTED_BUILD.findall(text)}
    images = compose_images()
    dev = our_containers(rendered["dev"])
    for where, image in our_containers(rendered["prod"]).items():
        assert image in documented, f"docs/deployment.md has no docker build for {image}"
        assert dev[where] in images[documented[image]], f"{image} is built from another target"


def test_compose_and_the_image_use_the_same_dicom_port():
    compose = load_compose()["services"]
    port = int(compose["pacs"]["environment"]["CXR_PACS_PORT"])
    assert PacsSettings.model_fields["pacs_port"].default == port
    published = {str(p).rpartition(":")[2] for p in compose["pacs"]["ports"]}
    assert published == {str(port)}
    assert f"('127.0.0.1', {port})" in " ".join(compose["pacs"]["healthcheck"]["test"])
    image = image_target(PACS_TARGET)
    assert image.args("EXPOSE") == [str(port)]
    assert f"CXR_PACS_PORT={port}" in " ".join(image.args("ENV"))
    assert f"('127.0.0.1', {port})" in image.last("HEALTHCHECK")


def test_the_receiver_listens_where_service_probes_and_policy_point(overlay_objects):
    port = int(load_compose()["services"]["pacs"]["environment"]["CXR_PACS_PORT"])
    scp = container(overlay_objects, "pacs")
    assert int(literal_env(scp)["CXR_PACS_PORT"]) == port
    assert literal_env(scp)["CXR_PACS_HOST"] == "0.0.0.0"
    (declared,) = [p for p in scp["ports"] if p["name"] == "dicom"]
    assert declared["containerPort"] == port
    (service_port,) = find(overlay_objects, "Service", "pacs")["spec"]["ports"]
    assert service_port["port"] == port
    assert service_port["targetPort"] in (declared["name"], port)
    for probe in ("readinessProbe", "livenessProbe"):
        assert scp[probe]["tcpSocket"]["port"] in (declared["name"], port), probe
    policy = find(overlay_objects, "NetworkPolicy", "pacs-dicom-ingress")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [port]


@pytest.mark.parametrize(("deployment", "variable"), [
    ("pacs", "CXR_PACS_METRICS_PORT"), ("pacs-sender", "CXR_PACS_SENDER_METRICS_PORT")])
def test_metrics_are_served_where_the_pod_declares_and_prometheus_scrapes(
        overlay_objects, deployment, variable):
    """The metrics port: the one the process is told, the one declared, annotated for scraping,
    admitted for Prometheus only, and in compose the same, unpublished, on all interfaces."""
    pod = pod_template(find(overlay_objects, "Deployment", deployment))
    process = pod["spec"]["containers"][0]
    env = literal_env(process)
    port = int(env[variable])
    assert env["CXR_PACS_METRICS_ADDRESS"] == "0.0.0.0"
    declared = {p["name"]: p["containerPort"] for p in process["ports"]}
    dicom_port = int(load_compose()["services"]["pacs"]["environment"]["CXR_PACS_PORT"])
    assert declared["metrics"] == port and port != dicom_port
    annotations = pod["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], int(annotations["prometheus.io/port"])) == (
        "true", port)
    if deployment == "pacs-sender":  # a prefork pool: the main process sums the children's files
        assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    service = load_compose()["services"][deployment]
    assert int(service["environment"][variable]) == port
    assert service["environment"]["CXR_PACS_METRICS_ADDRESS"] == "0.0.0.0"
    assert str(port) not in {str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])}


def test_the_receiver_runs_the_images_scp_and_the_sender_composes_command(overlay_objects):
    compose = load_compose()["services"]
    scp, sender = container(overlay_objects, "pacs"), container(overlay_objects, "pacs-sender")
    # compose's `pacs` keeps the image's entry point (python -m services.pacs); so does the pod.
    assert "entrypoint" not in compose["pacs"] and "command" not in compose["pacs"]
    assert "command" not in scp and "args" not in scp
    compose_command = compose["pacs-sender"]["entrypoint"]
    assert sender["command"][:6] == compose_command[:6] == [
        "celery", "-A", "services.pacs.celery_app", "worker", "-Q", "pacs"]
    node = sender["command"][sender["command"].index("--hostname") + 1]
    assert node == compose_command[compose_command.index("--hostname") + 1] == "pacs@%h"
    # The liveness probe is compose's health check: a ping to this pod's node name.
    kind, compose_check = compose["pacs-sender"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    assert sender["livenessProbe"]["exec"]["command"] == [
        "sh", "-c", compose_check.replace("$$", "$")]
    assert '"pacs@$HOSTNAME"' in sender["livenessProbe"]["exec"]["command"][2]
    # it only calls out to the PACS; its one port is for Prometheus
    assert [p["name"] for p in sender["ports"]] == ["metrics"]


def test_receiver_and_sender_read_the_same_settings(overlay_objects):
    scp, sender = container(overlay_objects, "pacs"), container(overlay_objects, "pacs-sender")
    assert scp["envFrom"] == sender["envFrom"]
    maps = {source["configMapRef"]["name"].rsplit("-", 1)[0] for source in scp["envFrom"]}
    assert maps == {"cxr-settings", "cxr-pacs-settings", "cxr-reid-settings"}
    listening = {"CXR_PACS_HOST", "CXR_PACS_PORT", "CXR_PACS_METRICS_PORT"}
    sender_only = {"CXR_PACS_SENDER_METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR"}
    assert ([e for e in scp["env"] if e["name"] not in listening]
            == [e for e in sender["env"] if e["name"] not in sender_only])


def pod_environment(objects: list[dict], c: dict) -> dict[str, str]:
    """The variables the container starts with; Secret values are stand-ins."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        env.update(find(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in c.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        env[item["name"]] = item["value"] if ref is None else f"stand-in-{ref['name']}-{ref['key']}"
    return env


def pacs_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> PacsSettings:
    """PacsSettings read from exactly `env`, as in the container."""
    for name in [n for n in os.environ if n.upper().startswith("CXR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PacsSettings()


@pytest.mark.parametrize("deployment", ["pacs", "pacs-sender"])
def test_the_overlay_settings_let_the_service_start(overlay_objects, deployment, monkeypatch):
    settings = pacs_settings(
        pod_environment(overlay_objects, container(overlay_objects, deployment)), monkeypatch)
    assert settings.env == "production"
    assert settings.allowed_calling_ae_titles
    compose_title = load_compose()["services"]["pacs"]["environment"]["CXR_PACS_AE_TITLE"]
    assert settings.pacs_ae_title == resolve_defaults(compose_title)


def test_the_base_alone_refuses_to_start_without_allowed_callers(monkeypatch):
    """An overlay that forgets to list the allowed senders gets a receiver that stops at start-up,
    never one that accepts images from anyone on the network."""
    base = render(K8S_DIR / "base")
    env = pod_environment(base, container(base, "pacs"))
    assert env["CXR_ENV"] == "production" and env["CXR_PACS_ALLOWED_CALLING_AE_TITLES"] == ""
    with pytest.raises(ValidationError, match="CXR_PACS_ALLOWED_CALLING_AE_TITLES"):
        pacs_settings(env, monkeypatch)


def dicom_policy_cidrs(objects: list[dict], port: int) -> set[str]:
    """The CIDRs the DICOM NetworkPolicy admits to the pods' `port`."""
    policy = find(objects, "NetworkPolicy", "pacs-dicom-ingress")
    return {peer["ipBlock"]["cidr"] for rule in policy["spec"]["ingress"]
            if any(p["port"] == port for p in rule["ports"]) for peer in rule["from"]}


def test_prod_exposes_the_dicom_port_to_the_hospital_network_only(rendered):
    service = find(rendered["prod"], "Service", "pacs")["spec"]
    assert service["type"] == "LoadBalancer"
    # Cluster would replace the sender's address by a node's, which the NetworkPolicy then refuses.
    assert service["externalTrafficPolicy"] == "Local"
    ranges = service["loadBalancerSourceRanges"]
    assert ranges and all(ipaddress.ip_network(r).prefixlen > 0 for r in ranges), ranges
    dicom_port = container(rendered["prod"], "pacs")["ports"][0]["containerPort"]
    assert set(ranges) == dicom_policy_cidrs(rendered["prod"], dicom_port)


def test_dev_keeps_the_dicom_port_inside_the_cluster(rendered):
    exposed = [s["metadata"]["name"] for s in rendered["dev"] if s["kind"] == "Service"
               and s["spec"].get("type", "ClusterIP") != "ClusterIP"]
    assert exposed == []


def test_the_image_and_compose_check_the_receiver_the_same_way():
    """A TCP connect to the SCP, as the pod's probes do."""
    healthcheck = image_target(PACS_TARGET).last("HEALTHCHECK")
    image_check = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert image_check == load_compose()["services"]["pacs"]["healthcheck"]["test"][1:]
    assert "socket.create_connection" in image_check[-1]
