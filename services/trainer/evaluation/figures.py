"""Evaluation and training figures as PNG files (matplotlib's Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import numpy as np  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
)

from services.trainer.evaluation.calibration import ECE_BINS  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_evaluation_figures(out_dir: Path, y_true, p_pneumonia, threshold: float,
                            prefix: str = "") -> dict[str, Path]:
    """Confusion matrix at `threshold`, ROC, precision-recall and reliability curves."""
    y_true = np.asarray(y_true, dtype=int)
    p = np.asarray(p_pneumonia, dtype=float)
    figures: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        y_true, (p >= threshold).astype(int), labels=[0, 1],
        display_labels=["NORMAL", "PNEUMONIA"], colorbar=False, ax=ax)
    ax.set_title(f"Confusion at threshold {threshold:.3f}")
    figures["confusion_matrix"] = _save(fig, out_dir / f"{prefix}confusion_matrix.png")

    if len(np.unique(y_true)) == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        RocCurveDisplay.from_predictions(y_true, p, name="pneumonia", ax=ax)
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        figures["roc"] = _save(fig, out_dir / f"{prefix}roc.png")

        fig, ax = plt.subplots(figsize=(4.5, 4))
        PrecisionRecallDisplay.from_predictions(y_true, p, name="pneumonia", ax=ax)
        figures["precision_recall"] = _save(fig, out_dir / f"{prefix}precision_recall.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    CalibrationDisplay.from_predictions(y_true, p, n_bins=ECE_BINS, strategy="uniform",
                                        name="pneumonia", ax=ax)
    ax.set_title(f"Reliability ({ECE_BINS} equal-width bins)")
    figures["calibration"] = _save(fig, out_dir / f"{prefix}calibration.png")
    return figures


def save_training_curves(out_dir: Path, history: Sequence[dict],
                         prefix: str = "") -> dict[str, Path]:
    """Loss and AUROC per epoch, training vs validation (a pair of lines per fold)."""
    if not history:
        return {}
    folds = sorted({row.get("fold") for row in history}, key=lambda f: -1 if f is None else f)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric in zip(axes, ("loss", "auroc"), strict=True):
        for fold in folds:
            rows = [row for row in history if row.get("fold") == fold]
            tag = "" if fold is None else f"fold {fold} "
            for split, style in (("", "-"), ("val_", "--")):
                values = [row.get(f"{split}{metric}") for row in rows]
                if any(v is not None for v in values):
                    ax.plot([row["epoch"] for row in rows], values, style,
                            label=f"{tag}{'validation' if split else 'training'}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend(fontsize="small")
    return {"training_curves": _save(fig, out_dir / f"{prefix}training_curves.png")}


def save_site_figures(out_dir: Path, y_true, p_model, p_site, site_decisions,
                      model_threshold: float) -> dict[str, Path]:
    """A site's acceptance figures: confusion at the site's (cross-fitted) and the model's
    operating point, ROC of the model's scores, reliability before and after calibration."""
    y_true = np.asarray(y_true, dtype=int)
    p_model, p_site = np.asarray(p_model, dtype=float), np.asarray(p_site, dtype=float)
    figures: dict[str, Path] = {}
    fig, axes = plt.subplots(1, 2, figsize=(8.5, 4))
    for ax, predicted, title in (
            (axes[0], np.asarray(site_decisions, dtype=int), "Site point (cross-fitted)"),
            (axes[1], (p_model >= model_threshold).astype(int),
             f"Model threshold {model_threshold:.3f}")):
        ConfusionMatrixDisplay.from_predictions(
            y_true, predicted, labels=[0, 1], display_labels=["NORMAL", "PNEUMONIA"],
            colorbar=False, ax=ax)
        ax.set_title(title)
    figures["confusion_matrices"] = _save(fig, out_dir / "confusion_matrices.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    RocCurveDisplay.from_predictions(y_true, p_model, name="model", ax=ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    figures["roc"] = _save(fig, out_dir / "roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    CalibrationDisplay.from_predictions(y_true, p_model, n_bins=ECE_BINS, strategy="uniform",
                                        name="model", ax=ax)
    CalibrationDisplay.from_predictions(y_true, p_site, n_bins=ECE_BINS, strategy="uniform",
                                        name="site (cross-fitted)", ax=ax)
    ax.set_title(f"Reliability ({ECE_BINS} equal-width bins)")
    figures["reliability"] = _save(fig, out_dir / "reliability.png")
    return figures
