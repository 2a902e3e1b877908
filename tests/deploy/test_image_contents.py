"""Each image target's file set, assembled from the Dockerfile, installs offline from the lock and
imports.

What `docker build --target NAME` would do, without Docker: the COPY sources of the target and the
stages it is built FROM are copied into an empty folder, the `uv sync` command of the builder it
takes its virtualenv from runs against the repository's lock (from uv's cache, no network), and
the image's entry modules import with that interpreter alone. A service that starts importing code
or packages its image lacks fails here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.loaders import (
    IMAGE_TARGETS,
    copied_from_stages,
    copy_sources,
    image_target,
    uv_bin,
)
from tests.support.procs import REPO_ROOT

ENTRY_IMPORTS = {
    "gateway": ["services.gateway.app", "services.gateway.__main__"],
    # The Celery worker, and the operator commands (the reconciler CronJob and compose service).
    "worker": ["services.worker.celery_app", "services.worker.tasks", "services.worker.__main__"],
    # The trainer image also runs `mlflow server` on PostgreSQL with S3 artifacts.
    "trainer": ["services.trainer.celery_app", "services.trainer.cli.main", "mlflow.server",
                "psycopg2", "boto3"],
    # The SCP and, with the Celery command, the report sender.
    "pacs": ["services.pacs.__main__", "services.pacs.celery_app", "services.pacs.tasks"],
}
# The gateway image must stay small: the import must not pull TensorFlow in.
MUST_NOT_IMPORT = {"gateway": "tensorflow"}


def assemble_app(service: str, app_dir: Path) -> None:
    for source in copy_sources(image_target(service)):
        origin, target = REPO_ROOT / source, app_dir / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)


def builder_sync_command(service: str) -> list[str]:
    """The `uv sync ...` arguments of the builder stage the image copies its virtualenv from."""
    ((builder, _),) = copied_from_stages(image_target(service))
    (run,) = [r for r in image_target(builder).args("RUN") if r.startswith("uv sync ")]
    return shlex.split(run)[1:]


def sync_group(service: str, project_dir: Path, venv: Path) -> None:
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy2(REPO_ROOT / name, project_dir / name)
    result = subprocess.run(
        [uv_bin(), *builder_sync_command(service), "--offline", "--link-mode", "symlink",
         "--python", "python3.11", "--quiet"],
        cwd=project_dir, capture_output=True, text=True, check=False, timeout=300,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
             "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"},
    )
    assert result.returncode == 0, f"{service}: {shlex.join(result.args)}:\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("service", IMAGE_TARGETS)
def test_image_file_set_imports_its_entry_points(service, tmp_path):
    app_dir, project_dir, venv = tmp_path / "app", tmp_path / "build", tmp_path / "venv"
    app_dir.mkdir()
    project_dir.mkdir()
    assemble_app(service, app_dir)
    sync_group(service, project_dir, venv)
    forbidden = MUST_NOT_IMPORT.get(service)
    check = "; ".join(f"import {module}" for module in ENTRY_IMPORTS[service])
    if forbidden:
        check += f"; import sys; assert {forbidden!r} not in sys.modules, 'imports {forbidden}'"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check], cwd=app_dir, capture_output=True, text=True,
        check=False, timeout=300,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(app_dir), "HOME": str(tmp_path),
             "MPLCONFIGDIR": str(tmp_path / "mpl")},
    )
    assert result.returncode == 0, f"{service} image cannot import:\n{result.stderr[-3000:]}"
