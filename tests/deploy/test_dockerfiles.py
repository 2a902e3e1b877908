"""The Dockerfile's image targets: locked installs, only the needed source, a non-root image.

Each check reads a target as `docker build --target NAME` builds it: the target stage and the
stages it is built FROM, plus the builder stage it copies its virtualenv from.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.deploy.dockerignore import ignore_patterns, is_ignored
from tests.deploy.loaders import (
    IMAGE_TARGETS,
    ImageTarget,
    copied_from_stages,
    copy_sources,
    dockerfile_stages,
    image_target,
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
VENV = "/app/.venv"


@pytest.fixture(params=IMAGE_TARGETS)
def service(request) -> str:
    return request.param


def venv_builder(target: ImageTarget) -> ImageTarget:
    """The builder the image takes its virtualenv from: its one COPY --from, of /app/.venv."""
    copies = copied_from_stages(target)
    assert len(copies) == 1 and copies[0][1] == [VENV, VENV], (
        f"{target.name}: expected one `COPY --from=<builder> {VENV} {VENV}`, found {copies}")
    return image_target(copies[0][0])


def test_targets_and_builders_start_from_the_same_python_slim(service):
    target = image_target(service)
    builder = venv_builder(target)
    # The virtualenv's interpreter links are only valid on the image the builder used.
    assert target.base == builder.base == BASE_IMAGE
    assert len(target.chain) >= 2, "the image shares no runtime base with the others"


def test_builder_installs_the_makefiles_uv_and_syncs_its_own_group_from_the_lock(service):
    builder = venv_builder(image_target(service))
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert f"UV_VERSION={makefile_uv.group(1)}" in builder.args("ARG")
    runs = " ".join(builder.args("RUN"))
    assert 'pip install --no-cache-dir "uv==${UV_VERSION}"' in runs
    assert "pyproject.toml uv.lock ./" in builder.args("COPY")
    assert f"UV_PROJECT_ENVIRONMENT={VENV}" in " ".join(builder.args("ENV"))
    syncs = re.findall(r"uv sync [^&;|]*", runs)
    assert syncs == [f"uv sync --frozen --no-dev --no-default-groups --group {service} "
                     "--no-install-project"], syncs


def files_in_repository(path: str) -> list[str]:
    """What a fresh clone has under `path` (tracked, or new and not ignored): an empty folder or
    an ignored file on this machine does not make a COPY source exist for a build elsewhere."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", path],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    return listed.splitlines()


def test_copied_sources_exist_and_are_in_the_build_context():
    patterns = ignore_patterns()
    for stage in dockerfile_stages():
        for source in copy_sources(stage):
            assert files_in_repository(source), f"{stage.name}: COPY {source}: nothing in the repo"
            assert not is_ignored(source, patterns), f"{stage.name}: {source} is in .dockerignore"


def test_every_stage_serves_an_image_target():
    """No stage is left behind that no `--target` builds (and so nothing checks)."""
    used = set()
    for service in IMAGE_TARGETS:
        target = image_target(service)
        used |= {stage.name for stage in [*target.chain, *venv_builder(target).chain]}
    assert {stage.name for stage in dockerfile_stages()} == used


def test_image_holds_only_its_own_service(service):
    service_sources = {s for s in copy_sources(image_target(service)) if s.startswith("services/")}
    assert service_sources == {"services/__init__.py", f"services/{service}/"}


def test_image_runs_as_the_service_user_without_compilers(service):
    target = image_target(service)
    assert target.last("USER") == "10001:10001"
    runs = " ".join(target.args("RUN"))
    assert not re.search(r"apt-get install|gcc|build-essential|pip install", runs)


def test_health_check_and_entry_point(service):
    target = image_target(service)
    assert len(target.args("HEALTHCHECK")) == 1
    expected = ENTRY_POINTS[service]
    assert target.command()[:len(expected)] == expected
    assert (REPO_ROOT / ENTRY_MODULES[service]).is_file()


def test_dockerignore_keeps_the_lock_and_source_in():
    patterns = ignore_patterns()
    for needed in ("pyproject.toml", "uv.lock", "shared/settings.py", "services/__init__.py"):
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
    env = " ".join(image_target("worker").args("ENV"))
    folder = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    assert folder and folder.group(1).startswith("/tmp/")
    assert "CXR_WORKER_METRICS_PORT=9100" in env


def test_targets_are_read_as_docker_builds_them(tmp_path):
    """The reading the checks above rely on: a target inherits the stages it is built FROM (ENV,
    USER, ...), an ENTRYPOINT drops an inherited CMD but keeps its own stage's, FROM resolves
    the global ARG, and a stage named later is no parent."""
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "ARG IMAGE=python:3.11-slim\n"
        "FROM ${IMAGE} AS base\n"
        "ENV A=1\n"
        "USER 10001:10001\n"
        'CMD ["python3"]\n'
        "FROM base AS child\n"
        'ENTRYPOINT ["python", "-m", "x"]\n'
        "FROM child AS grandchild\n"
        "USER root\n"
        'CMD ["--flag"]\n'
        'ENTRYPOINT ["run"]\n'
        "FROM later AS orphan\n"
        "FROM base AS later\n"
    )
    child = image_target("child", dockerfile)
    assert [s.name for s in child.chain] == ["base", "child"]
    assert child.base == "python:3.11-slim"
    assert child.args("ENV") == ["A=1"] and child.last("USER") == "10001:10001"
    assert child.command() == ["python", "-m", "x"]
    grandchild = image_target("grandchild", dockerfile)
    assert grandchild.last("USER") == "root"
    assert grandchild.command() == ["run", "--flag"]
    assert [s.name for s in image_target("orphan", dockerfile).chain] == ["orphan"]
    with pytest.raises(AssertionError, match="no stage 'missing'"):
        image_target("missing", dockerfile)
