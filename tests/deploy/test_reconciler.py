"""The job reconciler in every deployment: a CronJob in Kubernetes (one pass per run) and a
long-running loop in compose. Both run the worker image with the workers' settings and the real
CLI (`python -m services.worker reconcile`), with flags that CLI accepts."""

from __future__ import annotations

import argparse
import re

import pytest

from services.worker.__main__ import build_parser
from tests.deploy.loaders import (
    K8S_DIR,
    find,
    image_target,
    load_compose,
    pod_template,
    render,
)

CLI = ["python", "-m", "services.worker"]
# Read by the Celery worker process only, not by the reconciler.
WORKER_ONLY_ENV = {"CXR_WORKER_METRICS_PORT", "CXR_SERVING_VERSION_LABEL", "CXR_WORKER_CONCURRENCY"}
# The re-identification keys: the worker's retention purge deletes them, the reconciler never
# touches them (tests/deploy/test_reidentification_keys.py).
REID_PREFIX, REID_SETTINGS = "CXR_REID_", "cxr-reid-settings"


def worker_only(name: str) -> bool:
    return name in WORKER_ONLY_ENV or name.startswith(REID_PREFIX)
EVERY_N_MINUTES = re.compile(r"\*/([1-9][0-9]*) \* \* \* \*")
HEARTBEAT_MAX_AGE = re.compile(r"st_mtime > (\d+)\)")


def parse_cli(argv: list[str]) -> argparse.Namespace:
    assert argv[:3] == CLI, argv
    return build_parser().parse_args(argv[3:])


def cronjob(objects: list[dict]) -> dict:
    return find(objects, "CronJob", "reconciler")


def only_container(owner: dict) -> dict:
    (container,) = pod_template(owner)["spec"]["containers"]
    return container


def test_the_base_and_every_overlay_schedule_it(rendered):
    for objects in [render(K8S_DIR / "base"), *rendered.values()]:
        labels = pod_template(cronjob(objects))["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "reconciler"


def test_the_cli_refuses_what_it_does_not_know():
    """Parsing the manifests' commands proves something: bad flags and values are refused."""
    for argv in (["reconcile", "--evry", "120"], ["reconcile", "--every", "0"],
                 ["reconcile", "--min-age-s", "soon"], ["reconcil"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


def test_the_cronjob_runs_one_pass_at_a_time_and_ends_before_the_next(overlay_objects):
    spec = cronjob(overlay_objects)["spec"]
    schedule = EVERY_N_MINUTES.fullmatch(spec["schedule"])
    assert schedule, spec["schedule"]
    period_s = int(schedule.group(1)) * 60
    assert spec["concurrencyPolicy"] == "Forbid"
    assert 0 < spec["startingDeadlineSeconds"] < period_s
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["activeDeadlineSeconds"] < period_s
    assert 1 <= job["backoffLimit"] <= 5
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_the_cronjob_runs_the_cli_once_per_run(overlay_objects):
    container = only_container(cronjob(overlay_objects))
    args = parse_cli(container["command"])
    assert "args" not in container
    assert args.command == "reconcile"
    assert args.every is None and args.heartbeat_file is None  # one pass, then the exit status
    assert args.min_age_s > 0
    # The image's ENTRYPOINT is Celery; `command` replaces it with the image's own python.
    image = image_target("worker")
    assert "PATH=/app/.venv/bin:$PATH" in " ".join(image.args("ENV"))
    assert "services/worker/" in " ".join(image.args("COPY"))


def test_the_cronjob_uses_the_workers_image_settings_and_hardening(overlay_objects):
    reconciler = cronjob(overlay_objects)
    worker = find(overlay_objects, "Deployment", "worker")
    ours, theirs = only_container(reconciler), only_container(worker)
    assert ours["image"] == theirs["image"]
    assert ours["envFrom"] == [source for source in theirs["envFrom"] if not source[
        "configMapRef"]["name"].startswith(REID_SETTINGS)]
    assert ours["env"] == [e for e in theirs["env"] if not worker_only(e["name"])]
    assert ours["securityContext"] == theirs["securityContext"]
    # The writable /tmp, as the worker has it (only the worker reads the serving folder).
    assert ours["volumeMounts"] == [m for m in theirs["volumeMounts"] if m["name"] == "tmp"]
    pod, worker_pod = pod_template(reconciler)["spec"], pod_template(worker)["spec"]
    assert pod["securityContext"] == worker_pod["securityContext"]
    assert pod["serviceAccountName"] == "reconciler"


def test_compose_runs_the_loop_from_the_worker_image_with_its_settings():
    services = load_compose()["services"]
    reconciler, worker = services["reconciler"], services["worker"]
    assert reconciler["build"] == worker["build"] and reconciler["image"] == worker["image"]
    args = parse_cli([*reconciler["entrypoint"], *reconciler["command"]])
    assert args.command == "reconcile" and args.every > 0 and args.min_age_s > 0
    expected_env = {k: v for k, v in worker["environment"].items() if not worker_only(k)}
    assert reconciler["environment"] == expected_env
    assert set(reconciler["depends_on"]) == {"redis", "minio-init"}
    assert reconciler["read_only"] is True
    assert str(args.heartbeat_file.parent) in reconciler["tmpfs"]  # writable under read_only
    assert reconciler["restart"] == "unless-stopped"


def test_compose_health_follows_the_heartbeat_with_room_for_a_missed_pass():
    reconciler = load_compose()["services"]["reconciler"]
    args = parse_cli([*reconciler["entrypoint"], *reconciler["command"]])
    kind, *check = reconciler["healthcheck"]["test"]
    assert kind == "CMD" and check[:2] == ["python", "-c"]
    assert f"os.stat('{args.heartbeat_file}')" in check[2]
    max_age = HEARTBEAT_MAX_AGE.search(check[2])
    assert max_age, check[2]
    assert int(max_age.group(1)) >= 2 * args.every
