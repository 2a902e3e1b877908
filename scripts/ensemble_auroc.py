"""Would an ensemble rank a labelled set better than each of its networks alone?

Scores a Kaggle-layout folder with several exported versions (each through its serving
signature, at its own input size) and reports the AUROC, with its class-stratified bootstrap 95%
interval, of each version's p(pneumonia) and of the mean of their logits for every combination of
two or more. It fits nothing on the folder, so the folder may be a site's acceptance set. It
answers whether distilling an ensemble into one network is worth a training run; the service
never serves an ensemble of separate versions.

With `--soup`, every combination of two or more versions of one architecture is also scored as a
single network whose weights are the versions' mean (a "model soup": one network's cost, where the
mean logit costs one network per version).

With `--operating-point`, the mean of all the given versions also gets the threshold a trained
version would get: chosen (sensitivity first, `CXR_TARGET_SENSITIVITY`) on the training period's
validation films (the recipe's split, the gate set held out), then measured on the gate set and on
the folder.

    python -m scripts.ensemble_auroc --data ../shared/data/site_acceptance \\
        --model models/cxr-pneumonia/5 --model OTHER_EXPORT [--model ...] [--operating-point] \\
        [--soup] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from services.trainer.artifact.reexport import read_model_info, rebuild_members
from services.trainer.artifact.scoring import score_saved_model
from services.trainer.data.dataset import load_images, scan_dataset
from services.trainer.data.records import XrayRecord
from services.trainer.data.splits import split_by_patient, split_gate_set
from services.trainer.evaluation.calibration import softmax
from services.trainer.evaluation.metrics import bootstrap_auroc_ci, compute_metrics
from services.trainer.evaluation.thresholds import choose_threshold
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.recipe import select_records
from services.trainer.settings import get_settings
from shared.contract import pneumonia_probability

OPERATING_POINT_KEYS = ("n", "auroc", "auroc_ci", "sensitivity", "specificity", "ece",
                        "threshold")


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


def model_logits(models: list[Path], records: list[XrayRecord]) -> dict[str, np.ndarray]:
    """Each version's logit of p(pneumonia), at its own input size (films read once per size)."""
    images: dict[int, np.ndarray] = {}
    logits = {}
    for model in models:
        size = int(read_model_info(model)["image_size"])
        if size not in images:
            images[size] = load_images(records, size=size)
        logits[str(model)] = logit(score_saved_model(model, images[size]).p_pneumonia)
    return logits


# model_info fields that must agree for versions' weights to be averaged into one network
SOUP_FIELDS = ("backbone", "image_size", "internal_size", "equalize", "batch_norm_folded")


def soup_logits(models: list[Path], records: list[XrayRecord]) -> dict[tuple[str, ...], np.ndarray]:
    """For each combination of two or more versions, the logit of p(pneumonia) of one network
    holding the mean of their weights (temperature 1: the ranking is what is measured)."""
    from services.trainer.modeling.cnn_training import predict_logits

    infos = [read_model_info(model) for model in models]
    differing = [key for key in SOUP_FIELDS if len({str(info.get(key)) for info in infos}) > 1]
    if differing:
        raise ValueError(f"versions differ in {', '.join(differing)}: no weights to average")
    members = {str(model): rebuild_members(model, info)
               for model, info in zip(models, infos, strict=True)}
    if any(len(networks) != 1 for networks in members.values()):
        raise ValueError("a soup averages single networks, not ensembles")
    weights = {name: networks[0].get_weights() for name, networks in members.items()}
    network = members[str(models[0])][0]
    images = load_images(records, size=int(infos[0]["image_size"]))
    soups = {}
    for size in range(2, len(models) + 1):
        for names in itertools.combinations(weights, size):
            network.set_weights([np.mean(arrays, axis=0)
                                 for arrays in zip(*(weights[n] for n in names), strict=True)])
            probabilities = softmax(predict_logits(network, images))
            soups[names] = logit(pneumonia_probability(probabilities))
    return soups


def mean_logit(logits: dict[str, np.ndarray]) -> np.ndarray:
    return np.mean(list(logits.values()), axis=0)


def labels(records: list[XrayRecord]) -> np.ndarray:
    return np.array([r.label == "PNEUMONIA" for r in records], dtype=int)


def gate_split(config: TrainConfig) -> tuple[list[XrayRecord], list[XrayRecord]]:
    """(trainable, gate): the configured data set split as training runs split it (`CXR_GATE_*`)."""
    settings = get_settings()
    return split_gate_set(select_records(config), settings.gate_fraction, settings.gate_seed)


def operating_point(models: list[Path], data_records: list[XrayRecord],
                    data_mean_logit: np.ndarray) -> dict:
    """The mean's threshold chosen on the training period's validation films, and its figures
    there, on the gate set and on the data folder (`data_mean_logit`, its films' mean logit)."""
    settings = get_settings()
    config = TrainConfig.from_settings(settings)
    trainable, gate = gate_split(config)
    _, validation = split_by_patient(trainable, config.validation_fraction, seed=config.seed,
                                     strategy=config.validation_strategy)
    scored = [(name, records, mean_logit(model_logits(models, records)))
              for name, records in (("validation", validation), ("gate", gate))]
    scored.append(("data", data_records, data_mean_logit))
    probabilities = {name: 1.0 / (1.0 + np.exp(-z)) for name, _, z in scored}
    threshold = choose_threshold(labels(validation), probabilities["validation"],
                                 settings.target_sensitivity)
    result = {}
    for name, records, _ in scored:
        metrics = compute_metrics(labels(records), probabilities[name], threshold)
        result[name] = {key: metrics[key] for key in OPERATING_POINT_KEYS}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout labelled folder")
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="an exported version folder (give two or more)")
    parser.add_argument("--operating-point", action="store_true",
                        help="also the mean's threshold from the training period's validation "
                        "films, measured on the gate set and on --data")
    parser.add_argument("--soup", action="store_true",
                        help="also one network with the mean weights of each combination")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if len(args.model) < 2:
        parser.error("give at least two --model folders")
    records = scan_dataset(args.data)
    y_true = labels(records)
    logits = model_logits(args.model, records)
    rows = combinations_auroc(y_true, logits)
    if args.soup:
        rows += [{"models": list(names), "soup": True,
                  "auroc": float(roc_auc_score(y_true, score)),
                  "auroc_ci": bootstrap_auroc_ci(y_true, score)}
                 for names, score in soup_logits(args.model, records).items()]
    for row in rows:
        low, high = row["auroc_ci"]
        joined = (" & " if row.get("soup") else " + ").join(row["models"])
        print(f"{row['auroc']:.3f} ({low:.3f}-{high:.3f})  " + joined)
    report: dict = {"data": str(args.data), "n": len(y_true), "rows": rows}
    if args.operating_point:
        report["operating_point"] = operating_point(args.model, records, mean_logit(logits))
        print(json.dumps(report["operating_point"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
