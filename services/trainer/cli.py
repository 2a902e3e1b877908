"""The trainer's command line: `python -m services.trainer {explore,train,evaluate,...}`.

Each subcommand is one `add_<name>(subparsers)` function listed in `SUBCOMMANDS`: it registers its
arguments and a handler `(args) -> exit code`. Handlers import their module inside, so a light
subcommand such as `explore` never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.trainer.dataset_cli import DATASET_SUBCOMMANDS
from services.trainer.drift_reference import DRIFT_SUBCOMMANDS
from services.trainer.registry_cli import REGISTRY_SUBCOMMANDS
from services.trainer.scope_cli import SCOPE_SUBCOMMANDS
from services.trainer.site_cli import SITE_SUBCOMMANDS
from services.trainer.training_cli import TRAINING_SUBCOMMANDS
from shared.errors import CXRError


def default_data_dir() -> Path:
    """`CXR_DATA_DIR` (a relative one from the repository root), read when the parser is built."""
    from services.trainer.config import get_settings

    return get_settings().data_path


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_argument(parser: argparse.ArgumentParser) -> None:
    """`--data DIR`: the Kaggle-layout data set, defaulting to the `CXR_DATA_DIR` setting."""
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="Kaggle-layout data set folder (default: CXR_DATA_DIR = %(default)s)")


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
    from services.trainer.explore import explore

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
    from services.trainer.dataset import DatasetError

    try:
        return int(args.handler(args) or 0)
    except (DatasetError, CXRError) as err:
        message = err.message if isinstance(err, CXRError) else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
