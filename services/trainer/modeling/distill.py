"""Knowledge distillation: exported teachers whose mean class probabilities join the targets.

A teacher is an exported version folder (a SavedModel with the serving signature). Before
training, every teacher scores the un-augmented training images once, at its own input size;
the mean of their CLASS_PROBABILITIES rows is each image's teacher part, and
`cnn_training.training_targets` mixes it into the image's target with weight `distill_weight`.

A teacher must not have seen the images that validate or gate the student. Its model_info
records what it was trained on; a teacher is refused when it records another data fingerprint
(other images, or another gate set held out) or another validation split than the student's run.
With K folds every fold's validation images are training images of the teachers, so distillation
takes the single validation split only.

Scoring goes through an injected `TeacherScorer` (the trainer's `score_saved_model`), so this
layer stays below the artifact code that loads SavedModels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from services.trainer.data.dataset import load_images
from services.trainer.data.records import XrayRecord
from services.trainer.modeling.config import TrainConfig
from shared.contract import ASSETS_EXTRA, CLASS_NAMES, MODEL_INFO_FILE

# model_info fields of a teacher that the student's params and model_info repeat
RECORDED_FIELDS = ("model_name", "version", "data_fingerprint", "training_split")
# TrainConfig fields that decide which images validate a run (`recipe.validation_splits`); the
# seed decides them only for folds and the "random" strategy
SPLIT_FIELDS = ("folds", "validation_strategy", "validation_fraction")


class DistillationError(ValueError):
    """A teacher that cannot teach this run: not an export, or trained on what the run checks."""


class TeacherScores(Protocol):
    @property
    def class_probabilities(self) -> np.ndarray: ...


class TeacherScorer(Protocol):
    """Scores uint8 images [N, S, S, 1] with the exported version at `model_dir`."""

    def __call__(self, model_dir: Path, images: np.ndarray) -> TeacherScores: ...


@dataclass(frozen=True)
class Teacher:
    """An exported version folder and its model_info.json."""

    path: Path
    info: dict

    @classmethod
    def read(cls, path: str | Path) -> Teacher:
        folder = Path(path)
        if not (folder / "saved_model.pb").is_file():
            raise DistillationError(f"teacher {folder} is not an exported model version "
                                    "(no saved_model.pb)")
        info_file = folder / ASSETS_EXTRA / MODEL_INFO_FILE
        if not info_file.is_file():
            raise DistillationError(f"teacher {folder} has no {ASSETS_EXTRA}/{MODEL_INFO_FILE}")
        return cls(folder, json.loads(info_file.read_text()))

    @property
    def image_size(self) -> int:
        return int(self.info.get("image_size", 224))

    def record(self) -> dict:
        """The teacher's path and its recorded version, fingerprint and split, where present."""
        return {"path": str(self.path),
                **{name: self.info[name] for name in RECORDED_FIELDS if name in self.info}}


def training_split(params: Mapping) -> dict:
    """The settings that decide a run's validation images, from its params or `asdict(config)`.

    Runs that differ only in their seed share the "lowest" split, so their networks may teach
    each other.
    """
    split = {name: params[name] for name in SPLIT_FIELDS}
    if params["folds"] >= 2 or params["validation_strategy"] == "random":
        split["seed"] = params["seed"]
    return split


def check_teachers(teachers: Sequence[Teacher], config: TrainConfig,
                   data_fingerprint: str) -> None:
    """Raise `DistillationError` unless every teacher may teach this run (module docstring)."""
    if not teachers:
        return
    if config.folds >= 2:
        raise DistillationError(
            f"distillation takes a single validation split, not folds={config.folds}: with "
            "K folds every fold's validation images are training images of the teachers")
    if not 0.0 < config.distill_weight <= 1.0:
        raise DistillationError(f"distill_weight must be in (0, 1], got {config.distill_weight}")
    split = training_split(vars(config))
    for teacher in teachers:
        recorded = teacher.info.get("data_fingerprint")
        if recorded is not None and recorded != data_fingerprint:
            raise DistillationError(
                f"teacher {teacher.path} was trained on other data (data_fingerprint {recorded}, "
                f"this run's {data_fingerprint}): it may have seen the images that validate or "
                "gate this run")
        recorded_split = teacher.info.get("training_split")
        if recorded_split is not None and recorded_split != split:
            raise DistillationError(
                f"teacher {teacher.path} was validated on another split ({recorded_split}, this "
                f"run's {split}): it has trained on images that validate this run")


def teacher_probabilities(teachers: Sequence[Teacher], score: TeacherScorer,
                          records: Sequence[XrayRecord], indices: np.ndarray, *,
                          images: np.ndarray, image_size: int,
                          cache_dir: str | None = None) -> np.ndarray:
    """[len(records), 3]: the teachers' mean class probabilities on the images at `indices`.

    Rows outside `indices` are NaN. `images` are the run's own (at `image_size`); a teacher with
    another input size scores the same films loaded at its size.
    """
    chosen = [records[i] for i in indices]
    total = np.zeros((len(indices), len(CLASS_NAMES)))
    for teacher in teachers:
        pixels = (images[indices] if teacher.image_size == image_size
                  else load_images(chosen, size=teacher.image_size, cache_dir=cache_dir))
        probabilities = np.asarray(score(teacher.path, pixels).class_probabilities, dtype=float)
        if probabilities.shape != total.shape:
            raise DistillationError(f"teacher {teacher.path} answered class probabilities of "
                                    f"shape {probabilities.shape}, not {total.shape}")
        total += probabilities
    mean = np.full((len(records), len(CLASS_NAMES)), np.nan)
    mean[indices] = total / len(teachers)
    return mean


def lineage_info(params: Mapping) -> dict:
    """What an export records about its training: its validation split, and its teachers."""
    info: dict = {"training_split": training_split(params)}
    if params.get("teacher_models"):
        info |= {"teachers": params["teacher_models"], "distill_weight": params["distill_weight"]}
    return info
