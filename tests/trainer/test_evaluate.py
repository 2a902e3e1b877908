"""`evaluate_saved_model` and the `evaluate` / `train` subcommands on the sample images."""

import json
import os
import subprocess
import sys

import pytest

from services.trainer.artifact.scoring import evaluate_saved_model
from services.trainer.evaluation.metrics import METRIC_KEYS
from tests.support.procs import REPO_ROOT
from tests.trainer.conftest import SAMPLE_DIR


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m services.trainer ...` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "services.trainer", *args], cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
                          capture_output=True, text=True, timeout=900)


def test_evaluate_saved_model_at_its_own_threshold(sample_training, sample_export, tmp_path):
    _, outcome = sample_training
    metrics = evaluate_saved_model(sample_export, SAMPLE_DIR, figures_dir=tmp_path)
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["n"] == 40 and metrics["n_pneumonia"] == 20
    assert metrics["threshold"] == pytest.approx(outcome.threshold, abs=1e-6)
    assert sum(metrics["confusion"].values()) == 40
    assert metrics["n_subtyped"] == 20 and metrics["subtype_auroc"] is not None
    for path in metrics["figures"].values():
        assert os.path.getsize(path) > 0


def test_evaluate_cli_writes_json_with_all_keys(sample_export, tmp_path):
    out_json = tmp_path / "eval" / "metrics.json"
    result = _cli("evaluate", "--model", str(sample_export), "--data", str(SAMPLE_DIR),
                  "--json", str(out_json), "--out", str(tmp_path / "figs"))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out_json.read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert metrics["n"] == 40
    assert (tmp_path / "figs" / "roc.png").is_file()


def test_evaluate_cli_refuses_a_folder_that_is_not_a_model(tmp_path, run_main):
    code, err = run_main("evaluate", "--model", str(tmp_path), "--data", str(SAMPLE_DIR),
                         "--json", str(tmp_path / "m.json"))
    assert code == 2
    assert "not an exported model version" in err


@pytest.mark.slow
def test_train_cli_trains_writes_outcome_and_exports(tmp_path):
    # `--set` may give a field that has an option of its own when that option is not given.
    result = _cli("train", "--data", str(SAMPLE_DIR), "--epochs", "1", "--max-images", "24",
                  "--set", "batch_size=8", "--set", "seed=5", "--out", str(tmp_path / "train"),
                  "--export-base", str(tmp_path / "serving"), "--version", "3",
                  env={"CXR_TRAIN_IMAGE_CACHE_DIR": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads((tmp_path / "train" / "outcome.json").read_text())
    assert set(METRIC_KEYS) <= set(outcome["validation"])
    assert (outcome["params"]["epochs"], outcome["params"]["batch_size"],
            outcome["params"]["seed"]) == (1, 8, 5)
    version_dir = tmp_path / "serving" / "cxr-pneumonia" / "3"
    assert (version_dir / "saved_model.pb").is_file()
    info = json.loads((version_dir / "assets.extra" / "model_info.json").read_text())
    assert info["threshold"] == pytest.approx(outcome["threshold"])
    assert list((tmp_path / "cache").glob("*.npy"))  # the image cache setting was honoured


def test_train_cli_refuses_a_field_given_by_its_option_and_by_set(tmp_path, run_main):
    code, err = run_main("train", "--data", str(SAMPLE_DIR), "--seed", "1", "--set", "seed=2",
                         "--out", str(tmp_path / "train"))
    assert code == 2
    assert "seed given both by its own option and by --set" in err
    assert not (tmp_path / "train").exists()


def test_train_cli_refuses_a_value_out_of_its_fields_range(tmp_path, run_main):
    code, err = run_main("train", "--data", str(SAMPLE_DIR), "--set", "ema_momentum=1.5",
                         "--out", str(tmp_path / "train"))
    assert code == 2
    assert "ema_momentum must be in (0, 1)" in err
    assert not (tmp_path / "train").exists()


def test_train_cli_needs_version_with_export_base(tmp_path, run_main):
    code, err = run_main("train", "--data", str(SAMPLE_DIR), "--export-base", str(tmp_path))
    assert code == 2
    assert "--export-base and --version go together" in err


def test_evaluate_only_the_named_split(sample_export, tmp_path):
    import shutil

    for split, count in (("train", 3), ("test", 2)):
        for label in ("NORMAL", "PNEUMONIA"):
            target = tmp_path / split / label
            target.mkdir(parents=True)
            files = sorted((SAMPLE_DIR / label).iterdir())
            for path in files[:count] if split == "train" else files[-count:]:
                shutil.copy(path, target / path.name)
    assert evaluate_saved_model(sample_export, tmp_path)["n"] == 10
    only_test = evaluate_saved_model(sample_export, tmp_path, splits=["test"])
    assert only_test["n"] == 4 and only_test["splits"] == ["test"]


BUNDLED = REPO_ROOT / "models" / "cxr-pneumonia" / "5"


def test_evaluate_at_a_sites_operating_point_keeps_its_keys(tmp_path, run_main):
    from datetime import UTC, datetime

    from shared.operating_point import Calibration, OperatingPoint

    own = evaluate_saved_model(BUNDLED, SAMPLE_DIR)
    point = OperatingPoint(site="north", model_name="cxr-pneumonia", calibration=Calibration(
        method="platt", slope=1.0, intercept=-1.5), threshold=0.0, target_sensitivity=0.95,
        model_threshold=own["threshold"], fitted_at=datetime.now(UTC),
        data_fingerprint="aa" * 32, n=40, n_pneumonia=20, n_normal=20)
    (tmp_path / "point.json").write_bytes(point.to_json())
    out_json = tmp_path / "site.json"
    code, err = run_main("evaluate", "--model", str(BUNDLED), "--data", str(SAMPLE_DIR),
                         "--json", str(out_json), "--operating-point",
                         str(tmp_path / "point.json"))
    assert code == 0, err[-3000:]
    site = json.loads(out_json.read_text())
    assert set(METRIC_KEYS) <= set(site)
    # Threshold 0 on the site's scale: every film is PNEUMONIA, whatever the model's own says.
    assert site["threshold"] == 0.0 and site["model_threshold"] == pytest.approx(own["threshold"])
    assert (site["sensitivity"], site["specificity"]) == (1.0, 0.0)
    assert site["auroc"] == pytest.approx(own["auroc"])  # a monotone map keeps the ranking
    assert site["brier"] != pytest.approx(own["brier"])  # but the probabilities are the site's
    assert site["operating_point"]["site"] == "north"


def test_site_calibrate_runs_offline_into_out(tmp_path, run_main):
    from shared.operating_point import OperatingPoint

    code, err = run_main("site-calibrate", "--model", str(BUNDLED), "--data", str(SAMPLE_DIR),
                         "--site", "sample", "--out", str(tmp_path / "site"),
                         env={"CXR_MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})  # none listens
    assert code == 0, err[-3000:]
    point = OperatingPoint.from_json((tmp_path / "site" / "operating_point.json").read_bytes())
    assert (point.site, point.n, point.model_version) == ("sample", 40, None)
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    assert sum(report["site_threshold"]["confusion"].values()) == 40
    assert (tmp_path / "site" / "report.html").read_text().count("data:image/png;base64,") >= 3
    # The default asks 95% confidence; 20 sample pneumonia films split in two are too few for it,
    # and the report says so.
    assert point.sensitivity_confidence == report["sensitivity_confidence"] == 0.95
    assert "needs 59 pneumonia films; the halves had" in report["threshold_note"]
    assert "nor does the point fitted on all 20" in report["threshold_note"]
    assert "without reaching that confidence" in (tmp_path / "site" / "report.html").read_text()
    assert "splits the held-out sensitivity was" in (tmp_path / "site" / "report.html").read_text()
    assert report["split_spread"]["splits"] == 100
    code, err = run_main("site-calibrate", "--model", str(BUNDLED), "--data", str(SAMPLE_DIR),
                         "--site", "sample", "--out", str(tmp_path / "bad"), "--confidence", "1")
    assert code == 2 and "--confidence" in err
    code, err = run_main("site-calibrate", "--model", str(BUNDLED), "--data", str(SAMPLE_DIR),
                         "--site", "../x", "--out", str(tmp_path / "bad"))
    assert code == 2 and "site name" in err
