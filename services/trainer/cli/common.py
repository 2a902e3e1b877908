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


def add_version_writing_arguments(parser: argparse.ArgumentParser, base_option: str) -> None:
    """`--model`, the serving base (`base_option`), `--version` and `--images`: the arguments of
    a command that writes an exported version again as a new one."""
    parser.add_argument("--model", type=Path, required=True,
                        help="an exported version folder <base>/<model name>/<version>/")
    parser.add_argument(base_option, type=Path, required=True,
                        help="serving base folder: writes <base>/<model name>/<version>/")
    parser.add_argument("--version", type=int, required=True, help="version number to write")
    parser.add_argument("--images", type=Path, default=Path("data/sample"),
                        help="Kaggle-layout X-rays both folders must answer alike")


def write_version_again(model: Path, base: Path, version: int, images_dir: Path,
                        **options) -> tuple[Path, float, int]:
    """`reexport` of `model` as `version` under `base`, checked on the films of `images_dir` at
    the model's input size: (the new folder, the largest output difference, how many films)."""
    # Imported here: TensorFlow stays off the light command-line paths.
    from services.trainer.artifact.reexport import read_model_info, reexport
    from services.trainer.data.dataset import load_images, scan_dataset

    size = int(read_model_info(model)["image_size"])
    images = load_images(scan_dataset(images_dir, find_duplicates=False), size=size)
    target, difference = reexport(model, base, version, images, **options)
    return target, difference, len(images)
