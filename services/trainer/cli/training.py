"""Subcommands `train`, `evaluate` and `reexport` of the trainer CLI.

`train` runs the recipe (`modeling.recipe.run_training`), prints the validation metrics next to
the HOG baseline's, writes `outcome.json` and figures to `--out`, and exports for serving when
`--export-base` is given; `--teacher` (repeatable) distils exported versions into the network.
`evaluate` scores an exported version folder on a Kaggle-layout folder at the model's own
threshold and writes the metrics JSON (and figures with `--out`). `reexport` writes an exported
version again with the current export code (`artifact.reexport`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from services.trainer.artifact.scoring import evaluate_saved_model, score_saved_model
from services.trainer.cli.common import (
    add_data_argument,
    add_version_writing_arguments,
    not_an_export,
    write_version_again,
)
from services.trainer.data.splits import split_gate_set
from services.trainer.modeling.config import TrainConfig
from services.trainer.registry.gates import GateSet
from services.trainer.settings import get_settings
from shared.operating_point import OperatingPoint

SUMMARY_KEYS = ("n", "auroc", "auroc_ci", "sensitivity", "specificity", "precision", "f1", "ece",
                "subtype_auroc", "threshold")


def add_train(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train the CNN (and the HOG baseline) and export")
    add_data_argument(parser)
    parser.add_argument("--epochs", type=int, help="most epochs per network (CXR_TRAIN_EPOCHS)")
    parser.add_argument("--folds", type=int,
                        help="K >= 2: patient-grouped K-fold training (CXR_TRAIN_FOLDS)")
    parser.add_argument("--ship", choices=("ensemble", "refit"),
                        help="with --folds: one network refit on all images (default) or the "
                        "fold ensemble")
    parser.add_argument("--batch-size", type=int, help="images per step (CXR_TRAIN_BATCH_SIZE)")
    parser.add_argument("--seed", type=int, help="random seed (CXR_TRAIN_SEED)")
    parser.add_argument("--max-images", type=int, help="train on about N images (smoke runs)")
    parser.add_argument("--target-sensitivity", type=float,
                        help="sensitivity the threshold must reach (CXR_TARGET_SENSITIVITY)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the HOG baseline")
    parser.add_argument("--set", action="append", dest="recipe_settings", default=[],
                        metavar="FIELD=VALUE",
                        help="any other TrainConfig field, e.g. --set crop_area_min=0.5 "
                        "(repeatable; docs/model.md lists them)")
    parser.add_argument("--teacher", action="append", dest="teachers", type=Path, metavar="DIR",
                        help="an exported version folder to distil (repeatable): each training "
                        "image's target mixes in the teachers' mean class probabilities with "
                        "weight distill_weight (--set distill_weight=0.7, the default); a "
                        "teacher whose model_info records another data fingerprint or "
                        "validation split than this run is refused")
    parser.add_argument("--hold-out-gate", action="store_true",
                        help="train without the promotion gate set (CXR_GATE_FRACTION, "
                        "CXR_GATE_SEED), as retraining does; with --export-base, score the "
                        "export on it and write gate.json to --out")
    parser.add_argument("--out", type=Path, default=Path("out/train"),
                        help="folder for outcome.json and figures (default %(default)s)")
    parser.add_argument("--export-base", type=Path,
                        help="serving base folder: writes <base>/<model name>/<version>/")
    parser.add_argument("--version", type=int, help="version number for --export-base")
    parser.set_defaults(handler=run_train)


def recipe_overrides(pairs: list[str]) -> dict:
    """`["field=value", ...]` -> TrainConfig overrides, each value parsed as its field's type."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    overrides = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        default = getattr(defaults, name)
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--set {pair!r}: {name} is true or false")
            overrides[name] = text.lower() in ("true", "1")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            overrides[name] = type(default)(text)
        elif default is None and str(fields[name].type).startswith("int"):
            overrides[name] = int(text)  # int | None
        elif default is None and str(fields[name].type).startswith("float"):
            overrides[name] = float(text)  # float | None
        elif isinstance(default, str) or default is None:
            overrides[name] = text
        else:
            raise ValueError(f"--set {pair!r}: {name} cannot be set from the command line")
    return overrides


def run_train(args: argparse.Namespace) -> int:
    if (args.export_base is None) != (args.version is None):
        print("error: --export-base and --version go together", file=sys.stderr)
        return 2
    try:
        overrides = recipe_overrides(args.recipe_settings)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from services.trainer.artifact.export import export_for_serving
    from services.trainer.modeling.distill import DistillationError, lineage_info
    from services.trainer.modeling.model import architecture_info
    from services.trainer.modeling.recipe import run_training, select_records

    # Fields with an option of their own; --set may give one only where its option is not given.
    options = {
        "data_dir": str(args.data), "out_dir": str(args.out), "epochs": args.epochs,
        "folds": args.folds, "ship": args.ship, "batch_size": args.batch_size, "seed": args.seed,
        "max_images": args.max_images, "target_sensitivity": args.target_sensitivity,
        "baseline": False if args.no_baseline else None,
        "teachers": tuple(str(path) for path in args.teachers) if args.teachers else None}
    twice = sorted(name for name in overrides if options.get(name) is not None)
    if twice:
        print(f"error: {', '.join(twice)} given both by its own option and by --set; "
              "give it once", file=sys.stderr)
        return 2
    settings = get_settings()
    try:
        config = TrainConfig.from_settings(settings, verbose=1, **{**options, **overrides})
    except ValueError as err:  # a value out of its field's range
        print(f"error: {err}", file=sys.stderr)
        return 2
    records, gate_records = None, None
    if args.hold_out_gate:
        records, gate_records = split_gate_set(select_records(config), settings.gate_fraction,
                                               settings.gate_seed)
    try:
        outcome = run_training(config, records=records, score_teacher=score_saved_model)
    except DistillationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({
        "validation": {k: outcome.validation.get(k) for k in SUMMARY_KEYS},
        "baseline": {k: (outcome.baseline or {}).get(k) for k in SUMMARY_KEYS},
        "fold_summary": outcome.fold_summary,
        "baseline_fold_summary": (outcome.baseline or {}).get("fold_summary"),
        "temperature": outcome.temperature,
        "calibration": outcome.calibration, "outcome": str(args.out / "outcome.json"),
    }, indent=2))
    if args.export_base is not None:
        version_dir = export_for_serving(
            outcome.models, base_path=args.export_base, version=args.version,
            threshold=outcome.threshold, temperature=outcome.temperature,
            model_name=settings.model_name,
            extra_info={"data_fingerprint": outcome.params["data_fingerprint"],
                        **architecture_info(outcome.params), **lineage_info(outcome.params)})
        print(f"exported {version_dir}")
        if gate_records is not None:
            _score_gate_set(gate_records, version_dir, settings, args.out / "gate.json")
    return 0


def _score_gate_set(gate_records, version_dir: Path, settings, target: Path) -> None:
    gate_set = GateSet.from_records(gate_records, settings.image_size,
                                    settings.train_image_cache_dir)
    metrics = gate_set.evaluate(version_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics, indent=2))
    print(json.dumps({"gate_set": {k: metrics.get(k) for k in SUMMARY_KEYS}}, indent=2))
    return 0


def add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="metrics of an exported model on a data folder")
    parser.add_argument("--model", type=Path, required=True,
                        help="an exported version folder <base>/<model name>/<version>/")
    parser.add_argument("--data", type=Path, required=True, help="Kaggle-layout data folder")
    parser.add_argument("--json", type=Path, required=True, help="where to write the metrics")
    parser.add_argument("--out", type=Path, help="folder for the evaluation figures")
    parser.add_argument("--split", action="append", dest="splits", metavar="NAME",
                        help="only this split folder of the data (repeatable, e.g. --split test); "
                        "default: every image under --data")
    parser.add_argument("--operating-point", type=Path, metavar="FILE",
                        help="a site's operating_point.json: score at its calibration and "
                        "threshold instead of the model's own")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    if not_an_export(args.model):
        return 2
    point = None
    if args.operating_point is not None:
        try:
            point = OperatingPoint.from_json(args.operating_point.read_bytes())
        except (OSError, ValidationError) as err:
            print(f"error: {args.operating_point} is not a readable operating point: {err}",
                  file=sys.stderr)
            return 2
    metrics = evaluate_saved_model(args.model, args.data, figures_dir=args.out, splits=args.splits,
                                   operating_point=point)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: metrics.get(k) for k in SUMMARY_KEYS}, indent=2))
    return 0


def add_reexport(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reexport", help="write an exported version again with the current export code")
    add_version_writing_arguments(parser, "--export-base")
    parser.set_defaults(handler=run_reexport)


def run_reexport(args: argparse.Namespace) -> int:
    if not_an_export(args.model):
        return 2
    target, difference, count = write_version_again(args.model, args.export_base, args.version,
                                                    args.images)
    print(f"wrote {target}; outputs match the original on {count} images "
          f"(largest difference {difference:.2e})")
    return 0


TRAINING_SUBCOMMANDS = [add_train, add_evaluate, add_reexport]
