"""The trainer's layers: imports point one way, and the light modules load neither TensorFlow nor
MLflow (docs/architecture.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.support.procs import REPO_ROOT

TRAINER = REPO_ROOT / "services" / "trainer"
# A module may import from its own layer and from lower ranks; equal ranks do not import each other.
RANK = {"data": 0, "settings": 1, "explore": 2, "evaluation": 2, "modeling": 3, "scope": 4,
        "artifact": 5, "registry": 6, "retraining": 7, "cli": 8, "celery_app": 8, "__main__": 9}
HEAVY = ("tensorflow", "keras", "tensorflow_serving", "mlflow")
# Where TensorFlow, Keras and MLflow may be imported at all.
HEAVY_ALLOWED = ("modeling/", "artifact/", "registry/", "scope/model.py")
LIGHT = [
    "services.trainer.data.records", "services.trainer.data.naming",
    "services.trainer.data.dataset", "services.trainer.data.splits",
    "services.trainer.data.site_records",
    "services.trainer.data.manifest", "services.trainer.settings",
    "services.trainer.explore.facts", "services.trainer.explore.plots",
    "services.trainer.explore.summary", "services.trainer.evaluation.calibration",
    "services.trainer.evaluation.thresholds", "services.trainer.evaluation.metrics",
    "services.trainer.evaluation.figures", "services.trainer.evaluation.model_card",
    "services.trainer.evaluation.site_calibration", "services.trainer.modeling.config",
    "services.trainer.scope.data", "services.trainer.cli.main", "services.trainer.celery_app",
]


def _modules() -> list[Path]:
    return sorted(p for p in TRAINER.rglob("*.py") if p.name != "__init__.py")


def _layer(path: Path) -> str:
    return path.relative_to(TRAINER).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at its top or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return found


def test_every_trainer_module_has_a_layer() -> None:
    assert {_layer(path) for path in _modules()} <= set(RANK)


def test_no_layer_imports_a_later_one() -> None:
    wrong = []
    for path in _modules():
        layer = _layer(path)
        for name in _imports(path):
            parts = name.split(".")
            if parts[:2] != ["services", "trainer"] or len(parts) < 3 or parts[2] == layer:
                continue
            if RANK[parts[2]] >= RANK[layer]:
                wrong.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_tensorflow_and_mlflow_are_imported_only_where_they_belong() -> None:
    wrong = []
    for path in _modules():
        relative = path.relative_to(TRAINER).as_posix()
        if relative.startswith(HEAVY_ALLOWED):
            continue
        wrong += [f"{relative} imports {name}" for name in _imports(path)
                  if name.split(".")[0] in HEAVY]
    assert not wrong, "\n".join(wrong)


def test_light_modules_and_the_command_line_parser_load_neither_tensorflow_nor_mlflow() -> None:
    script = (
        "import importlib, sys\n"
        f"for name in {LIGHT!r}:\n"
        "    importlib.import_module(name)\n"
        f"    loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "    assert not loaded, f'{name} loads {loaded}'\n"
        "from services.trainer.cli.main import build_parser\n"
        "build_parser().parse_args(['train', '--epochs', '1'])\n"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not loaded, f'building the parser loads {loaded}'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
