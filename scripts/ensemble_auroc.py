"""Would an ensemble rank a labelled set better than each of its networks alone?

Scores a Kaggle-layout folder with several exported versions (each through its serving
signature, at its own input size) and reports the AUROC, with its class-stratified bootstrap 95%
interval, of each version's p(pneumonia) and of the mean of their logits for every combination of
two or more. It fits nothing on the folder, so the folder may be a site's acceptance set. It
answers whether distilling an ensemble into one network is worth a training run; the service
never serves an ensemble of separate versions.

    python -m scripts.ensemble_auroc --data ../shared/data/site_acceptance \\
        --model models/cxr-pneumonia/4 --model OTHER_EXPORT [--model ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from services.trainer.artifact.reexport import read_model_info
from services.trainer.artifact.scoring import score_saved_model
from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.evaluation.metrics import bootstrap_auroc_ci


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def combinations_auroc(y_true: np.ndarray, logits: dict[str, np.ndarray]) -> list[dict]:
    """One row per version and per combination of two or more: AUROC of the mean logit."""
    rows = []
    for size in range(1, len(logits) + 1):
        for names in itertools.combinations(logits, size):
            score = np.mean([logits[name] for name in names], axis=0)
            rows.append({"models": list(names), "auroc": float(roc_auc_score(y_true, score)),
                         "auroc_ci": bootstrap_auroc_ci(y_true, score)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout labelled folder")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="an exported version folder (give two or more)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if len(args.model) < 2:
        parser.error("give at least two --model folders")
    records = scan_dataset(args.data)
    y_true = np.array([r.label == "PNEUMONIA" for r in records], dtype=int)
    logits = {}
    for model in args.model:
        size = int(read_model_info(model)["image_size"])
        logits[str(model)] = logit(score_saved_model(model, load_images(records, size=size))
                                   .p_pneumonia)
    rows = combinations_auroc(y_true, logits)
    for row in rows:
        low, high = row["auroc_ci"]
        print(f"{row['auroc']:.3f} ({low:.3f}-{high:.3f})  " + " + ".join(row["models"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"data": str(args.data), "n": len(y_true), "rows": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
