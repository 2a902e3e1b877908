"""What several trainer subcommands share: the `--data` argument, argument types, input checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services.trainer.settings import get_settings


def default_data_dir() -> Path:
    """`CXR_DATA_DIR` (a relative one from the repository root), read when the parser is built."""
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


def not_an_export(model: Path) -> bool:
    """True (after saying so on stderr) when `model` is not an exported version folder."""
    if (model / "saved_model.pb").is_file():
        return False
    print(f"error: {model} is not an exported model version (no saved_model.pb)", file=sys.stderr)
    return True
