"""Evaluation, training and site figures: real PNG files drawn from small inputs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from services.trainer.evaluation.figures import (
    save_evaluation_figures,
    save_site_figures,
    save_training_curves,
)

Y = [0, 0, 0, 1, 1, 1, 1, 0]
P = [0.1, 0.4, 0.35, 0.8, 0.65, 0.3, 0.9, 0.2]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_evaluation_figures_are_pngs_named_with_the_prefix(tmp_path):
    figures = save_evaluation_figures(tmp_path / "eval", Y, P, threshold=0.5, prefix="test_")
    assert set(figures) == {"confusion_matrix", "roc", "precision_recall", "calibration"}
    for name, path in figures.items():
        assert path == tmp_path / "eval" / f"test_{name}.png"
        pixels = _pixels(path)
        assert pixels.shape[0] > 100 and pixels.std() > 0  # a drawing, not a blank canvas


def test_the_confusion_matrix_follows_the_threshold(tmp_path):
    low = save_evaluation_figures(tmp_path / "low", Y, P, threshold=0.05)["confusion_matrix"]
    high = save_evaluation_figures(tmp_path / "high", Y, P, threshold=0.95)["confusion_matrix"]
    assert not np.array_equal(_pixels(low), _pixels(high))


def test_one_class_only_draws_no_roc_or_precision_recall(tmp_path):
    figures = save_evaluation_figures(tmp_path, [1, 1, 1], [0.2, 0.7, 0.9], threshold=0.5)
    assert set(figures) == {"confusion_matrix", "calibration"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.png",
                                                          "confusion_matrix.png"]


def test_training_curves_one_figure_for_every_fold_and_none_without_history(tmp_path):
    assert save_training_curves(tmp_path / "none", []) == {}
    assert not (tmp_path / "none").exists()
    history = [{"fold": fold, "epoch": epoch, "loss": 1.0 / epoch, "auroc": 0.5 + 0.1 * epoch,
                "val_loss": 1.2 / epoch, "val_auroc": 0.5 + 0.05 * epoch}
               for fold in (0, 1) for epoch in (1, 2, 3)]
    figures = save_training_curves(tmp_path, history, prefix="cnn_")
    assert figures == {"training_curves": tmp_path / "cnn_training_curves.png"}
    assert _pixels(figures["training_curves"]).std() > 0


def test_site_figures(tmp_path):
    decisions = [int(p >= 0.3) for p in P]
    site = [min(1.0, p + 0.1) for p in P]
    figures = save_site_figures(tmp_path, Y, P, site, decisions, model_threshold=0.5)
    assert figures == {name: tmp_path / f"{name}.png"
                       for name in ("confusion_matrices", "roc", "reliability")}
    assert all(_pixels(path).std() > 0 for path in figures.values())
