"""How much of a model's bacterial-vs-viral AUROC the data set's resize history could explain.

The chest X-ray copies in the Kaggle layout were made from sources of different sizes, and the
subtype follows the source: in the training data nearly every pneumonia film resized from a
227 x 227 copy is viral and nearly every one from a 224 x 224 copy bacterial. A network that
learns the traces of that resizing scores a subtype AUROC that uploads (full-size films) will
not see. This script needs a manifest that names each file's source (a CSV with `path`, relative
to `--data`, and `source_resolution`, as the data set's own `manifest.csv` has); the service never
does. It reports, on the trainer's gate set (patients no model trains on, `CXR_GATE_*`):

- the model's subtype AUROC over all gate films of known subtype, and within each source group
  (the group of films never resized carries no resizing trace);
- the AUROC of a score that knows nothing but the source group: P(viral | source) counted on the
  pneumonia films outside the gate set.

    python -m scripts.subtype_shortcut --model models/cxr-pneumonia/5 \\
        --data DATA_DIR --manifest DATA_DIR/manifest.csv [--json out/subtype_shortcut.json]
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from services.trainer.artifact.scoring import score_saved_model
from services.trainer.data.dataset import load_images
from services.trainer.data.splits import split_gate_set
from services.trainer.evaluation.metrics import bootstrap_auroc_ci, subtype_auroc, viral_scores
from services.trainer.modeling.config import TrainConfig
from services.trainer.modeling.recipe import select_records
from services.trainer.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ("bacterial", "viral")


def subtype_auroc_by_group(subtypes: Sequence[str | None], class_probabilities,
                           groups: Sequence[str]) -> dict[str, dict]:
    """`subtype_auroc` within each group of images (say, by how each copy was resized).

    Per group: `n` (films of known subtype), `n_viral`, `auroc` (null when the group holds one
    subtype only) and its bootstrap `auroc_ci`.
    """
    subtypes = np.asarray([s or "" for s in subtypes])
    probs, groups = np.asarray(class_probabilities, dtype=float), np.asarray(groups)
    table = {}
    for group in sorted(set(groups[np.isin(subtypes, KNOWN)].tolist())):
        picked = (groups == group) & np.isin(subtypes, KNOWN)
        auroc, n = subtype_auroc(subtypes[picked].tolist(), probs[picked])
        _, is_viral, score = viral_scores(subtypes[picked].tolist(), probs[picked])
        table[group] = {"n": n, "n_viral": int(is_viral.sum()), "auroc": auroc,
                        "auroc_ci": bootstrap_auroc_ci(is_viral, score)}
    return table


def read_sources(manifest: Path) -> dict[str, str]:
    with manifest.open(newline="") as handle:
        return {row["path"]: row["source_resolution"] for row in csv.DictReader(handle)}


def source_of(path: Path, data_dir: Path, sources: dict[str, str]) -> str:
    relative = path.resolve().relative_to(data_dir.resolve()).as_posix()
    if relative not in sources:
        raise SystemExit(f"{relative} is not in the manifest")
    return sources[relative]


def measure(model_dir: Path, data_dir: Path, manifest: Path) -> dict:
    settings = get_settings()
    sources = read_sources(manifest)
    records = select_records(TrainConfig(data_dir=str(data_dir)))
    _, gate = split_gate_set(records, settings.gate_fraction, settings.gate_seed)
    gate_paths = {str(r.path) for r in gate}
    scored = [r for r in gate if r.subtype in KNOWN]
    rest = [r for r in records if str(r.path) not in gate_paths and r.subtype in KNOWN]

    scores = score_saved_model(model_dir, load_images(scored, size=settings.image_size))
    subtypes = [r.subtype for r in scored]
    groups = [source_of(Path(r.path), data_dir, sources) for r in scored]
    _, is_viral, score = viral_scores(subtypes, scores.class_probabilities)

    rest_groups = np.array([source_of(Path(r.path), data_dir, sources) for r in rest])
    rest_viral = np.array([r.subtype == "viral" for r in rest], dtype=float)
    viral_rate = {g: float(rest_viral[rest_groups == g].mean()) for g in sorted(set(rest_groups))}
    source_score = np.array([viral_rate.get(g, float(rest_viral.mean())) for g in groups])
    return {
        "model_dir": str(model_dir),
        "gate_films_of_known_subtype": len(scored),
        "model_subtype_auroc": float(roc_auc_score(is_viral, score)),
        "model_subtype_auroc_ci": bootstrap_auroc_ci(is_viral, score),
        "model_subtype_auroc_by_source": subtype_auroc_by_group(
            subtypes, scores.class_probabilities, groups),
        "viral_rate_by_source_outside_gate": viral_rate,
        "source_only_subtype_auroc": float(roc_auc_score(is_viral, source_score)),
    }


def report(result: dict) -> str:
    lines = [
        f"model {result['model_dir']}, {result['gate_films_of_known_subtype']} gate films of "
        f"known subtype: subtype AUROC {result['model_subtype_auroc']:.3f} "
        f"(95% CI {result['model_subtype_auroc_ci'][0]:.3f}-"
        f"{result['model_subtype_auroc_ci'][1]:.3f})",
        "| source | films | viral | model subtype AUROC | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for group, row in result["model_subtype_auroc_by_source"].items():
        auroc = "one subtype only" if row["auroc"] is None else f"{row['auroc']:.3f}"
        ci = "" if row["auroc_ci"] is None else f"{row['auroc_ci'][0]:.3f}-{row['auroc_ci'][1]:.3f}"
        lines.append(f"| {group} | {row['n']} | {row['n_viral']} | {auroc} | {ci} |")
    rates = ", ".join(
        f"{g} {r:.3f}" for g, r in result["viral_rate_by_source_outside_gate"].items())
    lines.append(f"\nP(viral | source) outside the gate set: {rates}")
    lines.append(f"A score that knows only the source: subtype AUROC "
                 f"{result['source_only_subtype_auroc']:.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--json", type=Path,
                        default=ROOT / "out" / "subtype_shortcut.json")
    args = parser.parse_args()
    result = measure(args.model, args.data, args.manifest)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
