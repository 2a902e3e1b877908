"""Does a model's training-period operating point hold on a later period?

Scores the promotion gate set (`CXR_GATE_*`: whole patients of the training period that no
training run sees) and a labelled Kaggle-layout folder with each exported version, through its
serving signature, and reports for each:

- `own`: sensitivity and specificity on both at the version's own threshold (chosen by its
  training run on its validation films);
- `gate_point`: the most specific threshold at which the gate set's sensitivity still reaches the
  target (`CXR_TARGET_SENSITIVITY`), that is the highest threshold the training period allows, and
  the folder's figures there;
- `window`: the range of thresholds (among the scores) at which the gate set's sensitivity, the
  folder's sensitivity and the folder's specificity (`--specificity-floor`) all reach their
  goals at once, or null when there is none.

The window reads the folder's labels, so it is an analysis of how far apart the two periods put
the operating point, never a way to choose a threshold: a site's own threshold is fitted
cross-fitted by `site-calibrate`.

    python -m scripts.operating_point_transfer --data ../shared/data/site_acceptance \\
        --model models/cxr-pneumonia/5 [--model ...] [--specificity-floor 0.85] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from scripts.ensemble_auroc import gate_split, labels
from services.trainer.artifact.reexport import read_model_info
from services.trainer.artifact.scoring import score_saved_model
from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.evaluation.thresholds import choose_threshold
from services.trainer.modeling.config import TrainConfig
from services.trainer.settings import get_settings


def rates(y_true, p_pneumonia, threshold: float) -> dict:
    """Sensitivity and specificity when p >= threshold is called PNEUMONIA."""
    y = np.asarray(y_true, dtype=int)
    called = np.asarray(p_pneumonia, dtype=float) >= threshold
    return {"sensitivity": float(called[y == 1].mean()),
            "specificity": float((~called[y == 0]).mean())}


def transfer(gate_y, gate_p, data_y, data_p, own_threshold: float, *,
             target_sensitivity: float, specificity_floor: float) -> dict:
    """The own threshold, the gate set's most specific threshold and the window (module doc)."""
    gate_threshold = choose_threshold(gate_y, gate_p, target_sensitivity, for_new_films=False)
    candidates = np.unique(np.concatenate([np.asarray(gate_p, float), np.asarray(data_p, float)]))
    inside = []
    for threshold in candidates:
        gate, data = rates(gate_y, gate_p, threshold), rates(data_y, data_p, threshold)
        if (gate["sensitivity"] >= target_sensitivity and data["sensitivity"] >= target_sensitivity
                and data["specificity"] >= specificity_floor):
            inside.append(float(threshold))
    return {
        "own": {"threshold": own_threshold, "gate": rates(gate_y, gate_p, own_threshold),
                "data": rates(data_y, data_p, own_threshold)},
        "gate_point": {"threshold": gate_threshold, "gate": rates(gate_y, gate_p, gate_threshold),
                       "data": rates(data_y, data_p, gate_threshold)},
        "window": [min(inside), max(inside)] if inside else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout labelled folder")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="an exported version folder (repeatable)")
    parser.add_argument("--specificity-floor", type=float, default=0.85,
                        help="the folder's specificity goal for the window (default 0.85)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if not 0.0 < args.specificity_floor <= 1.0:
        parser.error("--specificity-floor must be in (0, 1]")
    target = get_settings().target_sensitivity
    gate, data = gate_split(TrainConfig.from_settings())[1], scan_dataset(args.data)
    report: dict = {"data": str(args.data), "target_sensitivity": target,
                    "specificity_floor": args.specificity_floor, "models": {}}
    for model in args.model:
        size = int(read_model_info(model)["image_size"])
        gate_scores = score_saved_model(model, load_images(gate, size=size))
        data_scores = score_saved_model(model, load_images(data, size=size))
        report["models"][str(model)] = transfer(
            labels(gate), gate_scores.p_pneumonia, labels(data), data_scores.p_pneumonia,
            gate_scores.threshold, target_sensitivity=target,
            specificity_floor=args.specificity_floor)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
