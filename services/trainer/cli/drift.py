"""Subcommand `drift-reference`: write a version's reference distribution for the drift check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.trainer.artifact.drift_reference import (
    compute_reference,
    gate_images,
    write_reference,
)
from services.trainer.cli.common import add_data_argument, not_an_export


def add_drift_reference(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "drift-reference", help="write a version's reference distribution for the drift check")
    parser.add_argument("--model", type=Path, required=True, help="an exported version folder")
    add_data_argument(parser)
    parser.add_argument("--films", choices=("gate", "all"), default="gate",
                        help="the data set's gate set (default, the films retrain holds out) or "
                        "all of its films (a folder of validation films only)")
    parser.set_defaults(handler=run_drift_reference)


def run_drift_reference(args: argparse.Namespace) -> int:
    if not_an_export(args.model):
        return 2
    images, source = gate_images(args.data, args.films)
    reference = compute_reference(args.model, images, source)
    path = write_reference(args.model, reference)
    print(f"{reference.films} films, statistics {', '.join(reference.statistics)}: {path}",
          file=sys.stdout)
    return 0


DRIFT_SUBCOMMANDS = [add_drift_reference]
