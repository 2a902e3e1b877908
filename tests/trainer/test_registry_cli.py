"""`python -m services.trainer` registry subcommands: one JSON summary on stdout when they act, one
`error:` line on stderr and exit status 2 when the registry refuses, argparse's 2 for bad usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.cli.main import main
from services.trainer.settings import TrainerSettings, get_settings
from tests.support.tiny_model import make_tiny_serving_model
from tests.trainer.test_registry import served, settings_for


@pytest.fixture
def run(mlflow_server, tmp_path, monkeypatch, capsys):
    """Runs the command line against a fresh registered model; returns (status, stdout, stderr)."""
    # The audit trail to a file: its default, stdout, would interleave with the JSON summary.
    settings = settings_for(mlflow_server, tmp_path, audit_log=str(tmp_path / "audit.jsonl"))
    for name, value in {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                        "REGISTERED_MODEL_NAME": settings.registered_model_name,
                        "MLFLOW_EXPERIMENT": settings.mlflow_experiment,
                        "MODEL_BASE_PATH": settings.model_base_path,
                        "BUNDLED_MODELS_DIR": settings.bundled_models_dir,
                        "AUDIT_LOG": settings.audit_log, "PUBLISH_WAIT_FOR_LOAD_S": "0"}.items():
        monkeypatch.setenv(f"CXR_{name}", value)

    def call(*argv: str) -> tuple[int, str, str]:
        get_settings.cache_clear()
        try:
            status = main(list(argv))
        finally:
            get_settings.cache_clear()
        out, err = capsys.readouterr()
        return status, out, err

    call.settings = settings  # type: ignore[attr-defined]
    return call


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def test_rollback_without_a_champion_exits_2_with_one_line(run):
    status, out, err = run("rollback", "--reason", "false negatives", "--by", "on-call")
    assert (status, out) == (2, "")
    _one_error_line(err, run.settings.registered_model_name, "no champion")


def test_bootstrap_without_a_bundled_model_exits_2_naming_the_folder(run):
    status, out, err = run("bootstrap")
    assert (status, out) == (2, "")
    _one_error_line(err, "no bundled SavedModel", run.settings.bundled_models_dir)


def test_bootstrap_prints_what_it_did_as_json_and_serves_the_version(run):
    settings: TrainerSettings = run.settings
    make_tiny_serving_model(Path(settings.bundled_models_dir), 4, model_name=settings.model_name)
    status, out, err = run("bootstrap")
    assert status == 0, err
    first = json.loads(out)  # the summary alone: MLflow's run links went to stderr
    assert "View run" in err
    assert first["action"] == "registered" and first["bundled_version"] == 4
    assert served(settings) == ([first["version"]], first["version"])
    audited = [json.loads(line) for line in Path(settings.audit_log).read_text().splitlines()]
    assert [(a["action"], a["version"]) for a in audited] == [("model_promote", first["version"])]
    status, out, _ = run("bootstrap")
    assert status == 0 and json.loads(out)["action"] == "republished"
    assert json.loads(out)["version"] == first["version"]


@pytest.mark.parametrize("argv", [
    ["approve", "--version", "1", "--by", "dr.house"],  # no --reason
    ["promote", "--version", "one"],
    ["retrain", "--cutoff", "2026-12-01T00:00:00", "--manifest", "manifest.json"],
], ids=["approve-without-reason", "version-not-a-number", "cutoff-and-manifest"])
def test_bad_usage_exits_2_before_touching_the_registry(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
