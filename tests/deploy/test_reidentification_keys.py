"""Re-identification keys in the deployments: the services that write, read or purge them (gateway,
DICOM node, report sender, inference worker) get the same Fernet keys and the same key bucket, a
bucket of its own that only its own S3 user may use; no other service sees either."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pytest

from shared.settings import SharedSettings
from tests.deploy.loaders import containers, find, load_compose, pod_specs
from tests.deploy.test_settings_names import variable_names
from tests.support.procs import REPO_ROOT

KEY_USERS = {"gateway", "worker", "pacs", "pacs-sender"}
POLICY_DIR = REPO_ROOT / "infra" / "minio"
SERVICES_POLICY, REID_POLICY = "services-policy.json", "reidentification-policy.json"
# What the key users read to find the key storage, and the keys themselves.
STORE_NAMES = ("CXR_REID_STORAGE_BACKEND", "CXR_REID_S3_BUCKET", "CXR_REID_S3_PREFIX",
               "CXR_REID_STORAGE_ROOT", "CXR_REID_RETENTION_DAYS")


def policy_buckets(file_name: str) -> set[str]:
    """The buckets a MinIO policy file grants anything on."""
    policy = json.loads((POLICY_DIR / file_name).read_text())
    return {resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
            for statement in policy["Statement"] if statement["Effect"] == "Allow"
            for resource in statement["Resource"]}


@dataclass
class MinioSetup:
    """What a minio-init script does: buckets made, policies created (name -> file), attached and
    detached (user variable -> policy names)."""

    buckets: set[str] = field(default_factory=set)
    policies: dict[str, str] = field(default_factory=dict)
    attached: dict[str, set[str]] = field(default_factory=dict)
    detached: dict[str, set[str]] = field(default_factory=dict)


def minio_setup(script: str) -> MinioSetup:
    setup = MinioSetup()
    for line in script.splitlines():
        words = shlex.split(line.split("||", 1)[0])
        if words[:1] != ["mc"]:
            continue
        if words[1] == "mb":
            setup.buckets |= {w.split("/", 1)[1] for w in words[2:] if not w.startswith("-")}
        elif words[1:4] == ["admin", "policy", "create"]:
            setup.policies[words[5]] = words[6]
        elif words[1:3] == ["admin", "policy"] and words[3] in ("attach", "detach"):
            user = words[words.index("--user") + 1].lstrip("$")
            target = setup.attached if words[3] == "attach" else setup.detached
            target.setdefault(user, set()).add(words[5])
    return setup


def check_minio_users(setup: MinioSetup, reid_bucket: str, jobs_bucket: str) -> None:
    """The key bucket exists, only the key user may use it, the services' user may not."""
    assert {reid_bucket, jobs_bucket} <= setup.buckets
    assert reid_bucket != jobs_bucket
    by_file = {PurePosixPath(path).name: name for name, path in setup.policies.items()}
    services, reid = by_file[SERVICES_POLICY], by_file[REID_POLICY]
    assert setup.attached["S3_ACCESS_KEY"] == {services}
    assert setup.attached["REID_S3_ACCESS_KEY"] == {reid}
    # an existing deployment's services user loses the all-bucket policy it had before
    assert "readwrite" in setup.detached["S3_ACCESS_KEY"]
    assert policy_buckets(REID_POLICY) == {reid_bucket}
    assert reid_bucket not in policy_buckets(SERVICES_POLICY)
    assert jobs_bucket in policy_buckets(SERVICES_POLICY)


def test_the_policies_name_the_buckets_they_grant_and_nothing_wider():
    for file_name in (SERVICES_POLICY, REID_POLICY):
        buckets = policy_buckets(file_name)
        assert buckets and "*" not in "".join(buckets), file_name
    assert policy_buckets(SERVICES_POLICY) & policy_buckets(REID_POLICY) == set()


def test_the_settings_name_every_variable_the_deployments_set():
    readable = variable_names(SharedSettings)
    assert {"CXR_REID_KEYS", "CXR_REID_S3_ACCESS_KEY_ID", "CXR_REID_S3_SECRET_ACCESS_KEY",
            *STORE_NAMES} <= readable


# --- docker compose ---

@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def test_compose_gives_the_key_users_the_same_keys_and_bucket(compose):
    services = compose["services"]
    seen = set()
    for name in KEY_USERS:
        env = services[name]["environment"]
        assert env["CXR_STORAGE_BACKEND"] == "s3", name
        store = tuple(env.get(n) for n in STORE_NAMES)
        credentials = (env["CXR_REID_S3_ACCESS_KEY_ID"], env["CXR_REID_S3_SECRET_ACCESS_KEY"])
        seen.add((env["CXR_REID_KEYS"], store, credentials, env["CXR_S3_ENDPOINT_URL"]))
        assert env["CXR_REID_STORAGE_BACKEND"] == "s3", name
        assert env["CXR_REID_S3_BUCKET"] != env["CXR_S3_BUCKET"], name
        # the key user's own credentials, not the services' user
        assert credentials[0] != env["AWS_ACCESS_KEY_ID"], name
    assert len(seen) == 1, seen


def test_compose_keeps_the_keys_from_every_other_service(compose):
    for name, service in compose["services"].items():
        if name in KEY_USERS:
            continue
        env = service.get("environment") or {}
        names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        reid = {n for n in names if "REID" in n}
        if name == "minio-init":  # creates the key bucket's user, never sees the Fernet keys
            assert reid == {"REID_S3_ACCESS_KEY", "REID_S3_SECRET_KEY"}
        else:
            assert reid == set(), f"{name} gets {reid}"


def test_compose_creates_the_key_bucket_for_its_own_user_only(compose):
    init = compose["services"]["minio-init"]
    setup = minio_setup(init["command"][0])
    gateway = compose["services"]["gateway"]["environment"]
    check_minio_users(setup, gateway["CXR_REID_S3_BUCKET"], gateway["CXR_S3_BUCKET"])
    # the policy files are the ones in infra/minio, mounted where the script reads them
    mounts = {target: source for source, target, *_ in
              (volume.split(":") for volume in init["volumes"])}
    for path in setup.policies.values():
        folder, file_name = str(PurePosixPath(path).parent), PurePosixPath(path).name
        assert (REPO_ROOT / mounts[folder] / file_name).resolve() == POLICY_DIR / file_name
    assert compose["services"]["mlflow"]["environment"]["AWS_ACCESS_KEY_ID"] == \
        gateway["AWS_ACCESS_KEY_ID"]  # MLflow's artifacts: the services' user, not the key user


def test_compose_the_key_is_optional_and_the_bucket_credentials_are_required():
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert "CXR_REID_KEYS: ${CXR_REID_KEYS:-}" in text  # empty: no key kept, documented
    for secret in ("REID_S3_ACCESS_KEY", "REID_S3_SECRET_KEY"):
        assert f"${{{secret}:?" in text


# --- Kubernetes ---

def resolved_env(objects: list[dict], container: dict) -> dict[str, object]:
    """Variable -> its value (plain or from a ConfigMap) or ("secret", name, key)."""
    config_maps = {o["metadata"]["name"]: o.get("data", {}) for o in objects
                   if o["kind"] == "ConfigMap"}
    env: dict[str, object] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        env[entry["name"]] = ("secret", ref["name"], ref["key"]) if ref else entry.get("value")
    return env


def secret_names(container: dict) -> set[str]:
    return {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def test_kubernetes_gives_the_key_users_the_same_keys_and_bucket(overlay_objects):
    seen = set()
    for name in KEY_USERS:
        pod = find(overlay_objects, "Deployment", name)["spec"]["template"]["spec"]
        for container in pod["containers"]:
            env = resolved_env(overlay_objects, container)
            assert env["CXR_REID_KEYS"] == ("secret", "cxr-reid", "keys"), name
            assert env["CXR_REID_S3_ACCESS_KEY_ID"] == ("secret", "cxr-reid-s3", "access-key")
            assert env["CXR_REID_S3_SECRET_ACCESS_KEY"] == \
                ("secret", "cxr-reid-s3", "secret-key")
            assert env["CXR_REID_STORAGE_BACKEND"] == "s3", name
            assert env["CXR_REID_S3_BUCKET"] and \
                env["CXR_REID_S3_BUCKET"] != env["CXR_S3_BUCKET"], name
            seen.add(tuple(env.get(n) for n in (*STORE_NAMES, "CXR_S3_ENDPOINT_URL")))
    assert len(seen) == 1, seen


def test_kubernetes_keeps_the_keys_from_every_other_pod(overlay_objects):
    reid_maps = {o["metadata"]["name"] for o in overlay_objects if o["kind"] == "ConfigMap"
                 and any(key.startswith("CXR_REID_") for key in o.get("data", {}))}
    assert reid_maps  # the key users' settings come from one of these
    for owner, pod in pod_specs(overlay_objects):
        name = owner["metadata"]["name"]
        if owner["kind"] == "Deployment" and name in KEY_USERS:
            continue
        for container in containers(pod):
            env = resolved_env(overlay_objects, container)
            from_maps = {s["configMapRef"]["name"] for s in container.get("envFrom", [])}
            assert not from_maps & reid_maps, name
            assert not any(n.startswith("CXR_REID_") for n in env), name
            allowed = {"cxr-reid-s3"} if name == "minio-init" else set()
            assert secret_names(container) & {"cxr-reid", "cxr-reid-s3"} == allowed, name


def test_kubernetes_dev_creates_the_key_bucket_for_its_own_user_only(rendered):
    objects = rendered["dev"]
    job = find(objects, "Job", "minio-init")["spec"]["template"]["spec"]
    container = job["containers"][0]
    setup = minio_setup(container["args"][0])
    gateway = resolved_env(objects, find(objects, "Deployment", "gateway")[
        "spec"]["template"]["spec"]["containers"][0])
    check_minio_users(setup, str(gateway["CXR_REID_S3_BUCKET"]), str(gateway["CXR_S3_BUCKET"]))
    # the mounted ConfigMap carries the very files of infra/minio, where the script reads them
    volumes = {v["name"]: v for v in job["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    config_maps = {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}
    for path in setup.policies.values():
        folder, file_name = str(PurePosixPath(path).parent), PurePosixPath(path).name
        data = config_maps[mounts[folder]["configMap"]["name"]]
        assert data[file_name] == (POLICY_DIR / file_name).read_text()
