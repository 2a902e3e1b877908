"""Subcommands `train-scope` and `bundle-scope` of the trainer CLI.

`train-scope` trains the scope-screening network (`scope/model.py`) on `--data-root` (holding
`chest_xray/`, `nih_adult/`, `out_of_scope/` and, for the figures only, `site_acceptance/`),
writes the screen to `--out` and its figures to `--out/report.json`. `bundle-scope` writes an
exported pneumonia version again with a trained screen added, as a new version whose pneumonia
outputs must equal the old one's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.trainer.cli.common import (
    add_version_writing_arguments,
    not_an_export,
    positive_int,
    write_version_again,
)
from services.trainer.scope.data import load_scope_data


def add_train_scope(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train-scope", help="train the scope-screening network")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"),
                        help="folder holding chest_xray/, nih_adult/, out_of_scope/ "
                        "(default %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("out/scope"),
                        help="folder for the trained screen and report.json")
    parser.add_argument("--steps", type=positive_int, default=600, help="training steps")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--synthetic-per-kind", type=positive_int, default=400,
                        help="synthetic out-of-scope images of each kind")
    parser.add_argument("--max-films", type=positive_int,
                        help="use about N chest_xray films (smoke runs)")
    parser.add_argument("--false-flag-rate", type=float, default=0.004,
                        help="per check, on held-back in-scope films (default %(default)s)")
    parser.add_argument("--holdout", action="append", default=[], metavar="CATEGORY",
                        help="leave an out-of-scope category or synthetic kind out of training")
    parser.add_argument("--cache", type=Path, help="folder to keep the pooled images between runs")
    parser.set_defaults(handler=run_train_scope)


def run_train_scope(args: argparse.Namespace) -> int:
    from services.trainer.scope.evaluation import evaluate_screen, site_acceptance_pooled
    from services.trainer.scope.model import ScopeTrainConfig, train_screen

    if not 0 < args.false_flag_rate < 0.5:
        raise SystemExit("error: --false-flag-rate must be between 0 and 0.5")
    data = load_scope_data(args.data_root, synthetic_per_kind=args.synthetic_per_kind,
                           seed=args.seed, max_films=args.max_films, cache=args.cache)
    config = ScopeTrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                              holdout=tuple(args.holdout), false_flag_rate=args.false_flag_rate)
    screen = train_screen(data, config)
    screen.save(args.out)
    site = args.data_root / "site_acceptance"
    report = evaluate_screen(screen, data,
                             site_acceptance_pooled(site) if site.is_dir() else None)
    report["info"] = screen.info
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({key: report[key].get("any", report[key]) for key in
                      ("in_scope_held_back", "site_acceptance", "adult_held_back")
                      if key in report}, indent=2))
    print(f"wrote {args.out}")
    return 0


def add_bundle_scope(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bundle-scope", help="a new version: an exported pneumonia version plus a scope screen")
    add_version_writing_arguments(parser, "--out-base")
    parser.add_argument("--scope", type=Path, required=True, help="a train-scope --out folder")
    parser.set_defaults(handler=run_bundle_scope)


def run_bundle_scope(args: argparse.Namespace) -> int:
    if not_an_export(args.model):
        return 2
    from services.trainer.scope.model import ScopeScreen

    target, difference, count = write_version_again(
        args.model, args.out_base, args.version, args.images, scope=ScopeScreen.load(args.scope))
    print(f"wrote {target}; pneumonia outputs match {args.model} on {count} images "
          f"(largest difference {difference:.2e})")
    return 0


SCOPE_SUBCOMMANDS = [add_train_scope, add_bundle_scope]
