"""The service Dockerfiles: locked installs, only the needed source, a non-root final stage."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.deploy.dockerignore import ignore_patterns, is_ignored
from tests.deploy.loaders import (
    SERVICE_DOCKERFILES,
    DockerStage,
    copy_sources,
    dockerfile_stages,
    uv_bin,
)
from tests.support.procs import REPO_ROOT

BASE_IMAGE = "python:3.11-slim"
ENTRY_POINTS = {
    "gateway": ["python", "-m", "services.gateway"],
    "worker": ["celery", "-A", "services.worker.celery_app", "worker", "-Q", "inference"],
    "trainer": ["celery", "-A", "services.trainer.celery_app", "worker", "-Q", "training"],
    # The SCP; the report sender is the same image with the Celery command (compose, k8s).
    "pacs": ["python", "-m", "services.pacs"],
}
ENTRY_MODULES = {
    "gateway": "services/gateway/__main__.py",
    "worker": "services/worker/celery_app.py",
    "trainer": "services/trainer/celery_app.py",
    "pacs": "services/pacs/__main__.py",
}


@pytest.fixture(params=sorted(SERVICE_DOCKERFILES))
def service(request) -> str:
    return request.param


def stages_of(service: str) -> list[DockerStage]:
    return dockerfile_stages(SERVICE_DOCKERFILES[service])


def test_multi_stage_build_from_python_slim(service):
    stages = stages_of(service)
    assert len(stages) >= 2
    assert {stage.base for stage in stages} == {BASE_IMAGE}


def test_builder_installs_the_makefiles_uv_and_syncs_the_lock(service):
    builder = stages_of(service)[0]
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert f"UV_VERSION={makefile_uv.group(1)}" in builder.args("ARG")
    runs = " ".join(builder.args("RUN"))
    assert 'pip install --no-cache-dir "uv==${UV_VERSION}"' in runs
    assert "pyproject.toml uv.lock ./" in builder.args("COPY")
    assert f"uv sync --frozen --no-dev --no-default-groups --group {service}" in runs


def files_in_repository(path: str) -> list[str]:
    """What a fresh clone has under `path` (tracked, or new and not ignored): an empty folder or
    an ignored file on this machine does not make a COPY source exist for a build elsewhere."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", path],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return listed.splitlines()


def test_copied_sources_exist_and_are_in_the_build_context(service):
    patterns = ignore_patterns()
    for stage in stages_of(service):
        for source in copy_sources(stage):
            assert files_in_repository(source), f"{service}: COPY {source}: nothing in the repo"
            assert not is_ignored(source, patterns), f"{service}: {source} is in .dockerignore"


def test_final_stage_holds_only_its_own_service(service):
    final = stages_of(service)[-1]
    assert "--from=builder /app/.venv /app/.venv" in final.args("COPY")
    service_sources = {s for s in copy_sources(final) if s.startswith("services/")}
    assert service_sources == {"services/__init__.py", f"services/{service}/"}


def test_final_stage_runs_as_the_service_user_without_compilers(service):
    final = stages_of(service)[-1]
    assert final.args("USER") == ["10001:10001"]
    runs = " ".join(final.args("RUN"))
    assert not re.search(r"apt-get install|gcc|build-essential|pip install", runs)


def test_health_check_and_entry_point(service):
    final = stages_of(service)[-1]
    assert len(final.args("HEALTHCHECK")) == 1
    command = [*json.loads((final.args("ENTRYPOINT") or ["[]"])[0]),
               *json.loads((final.args("CMD") or ["[]"])[0])]
    expected = ENTRY_POINTS[service]
    assert command[:len(expected)] == expected
    assert (REPO_ROOT / ENTRY_MODULES[service]).is_file()


def test_dockerignore_keeps_the_lock_and_source_in():
    patterns = ignore_patterns()
    for needed in ("pyproject.toml", "uv.lock", "shared/config.py", "services/__init__.py"):
        assert not is_ignored(needed, patterns), needed
    for left_out in (".venv/bin/python", "tests/conftest.py", "shared/__pycache__/x.pyc", ".git"):
        assert is_ignored(left_out, patterns), left_out


def test_gateway_group_brings_no_tensorflow():
    exported = subprocess.run(
        [uv_bin(), "export", "--frozen", "--no-dev", "--no-default-groups", "--group", "gateway",
         "--no-hashes"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    packages = {line.split("==")[0] for line in exported.splitlines() if "==" in line}
    assert {"fastapi", "uvicorn", "celery"} <= packages
    assert not {name for name in packages if name.startswith("tensorflow")}


def test_worker_pool_metrics_have_a_fresh_writable_folder():
    """With the prefork pool the worker refuses to serve metrics without a multiprocess folder;
    it must be on the per-container scratch mount (/tmp), never on a kept volume."""
    env = " ".join(stages_of("worker")[-1].args("ENV"))
    folder = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    assert folder and folder.group(1).startswith("/tmp/")
    assert "CXR_WORKER_METRICS_PORT=9100" in env
