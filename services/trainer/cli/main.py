"""The trainer's command line: `python -m services.trainer {explore,train,evaluate,...}`.

Each subcommand is one `add_<name>(subparsers)` function listed in `SUBCOMMANDS`: it registers its
arguments and a handler `(args) -> exit code`. Handlers that need TensorFlow or MLflow import
them inside, so building the parser and light subcommands such as `explore` never load either.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.trainer.cli.common import add_data_argument, positive_int
from services.trainer.cli.dataset import DATASET_SUBCOMMANDS
from services.trainer.cli.drift import DRIFT_SUBCOMMANDS
from services.trainer.cli.registry import REGISTRY_SUBCOMMANDS
from services.trainer.cli.scope import SCOPE_SUBCOMMANDS
from services.trainer.cli.site import SITE_SUBCOMMANDS
from services.trainer.cli.training import TRAINING_SUBCOMMANDS
from services.trainer.data.dataset import DatasetError
from services.trainer.explore.summary import explore
from shared.errors import CXRError


def add_explore(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("explore", help="figures and a summary of the data set")
    add_data_argument(parser)
    parser.add_argument("--out", type=Path, default=Path("out/explore"),
                        help="folder for the PNG figures, summary.md and summary.json")
    parser.add_argument("--samples-per-class", type=positive_int, default=6,
                        help="images per class in the sample grid")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sample grid")
    parser.set_defaults(handler=run_explore)


def run_explore(args: argparse.Namespace) -> int:
    summary = explore(args.data, args.out, samples_per_class=args.samples_per_class,
                      seed=args.seed)
    print(f"{summary['images']} images, {summary['patients']['total']} patients, "
          f"{summary['duplicate_groups']['groups']} duplicate groups; "
          f"figures and summary in {args.out}")
    return 0


# Register a new subcommand by appending its `add_<name>` function here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_explore]
SUBCOMMANDS += REGISTRY_SUBCOMMANDS
SUBCOMMANDS += TRAINING_SUBCOMMANDS
SUBCOMMANDS += SITE_SUBCOMMANDS
SUBCOMMANDS += SCOPE_SUBCOMMANDS
SUBCOMMANDS += DATASET_SUBCOMMANDS
SUBCOMMANDS += DRIFT_SUBCOMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.trainer",
                                     description="cxr-pneumonia training tools")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the subcommand; a data or input error is one line on stderr, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (DatasetError, CXRError) as err:
        message = err.message if isinstance(err, CXRError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
