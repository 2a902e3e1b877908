"""Write a served model version again with the current export code, from its own weights.

When the serving contract gains something (the `gradcam` signature also answering the prediction,
so the worker needs one call a job), a version exported before can be brought up to date without
training: the networks are rebuilt with `build_network` (the backbone named in model_info),
given the SavedModel's variables, exported with `export_for_serving` at the version's own
threshold and temperature, and the new folder is checked against the old one on the same images
before it is kept.

The same path adds a scope screen to a version (`bundle-scope`): the pneumonia networks are
rebuilt as above and exported with the screen, and the pneumonia outputs must match the old
folder's. When the current code explains with another map than the old folder did
(`gradcam_layer`, recorded in model_info; a folder without it used the last map), the heatmap is a
new one and is left out of the comparison; the predictions must still match. A version that
already holds a screen (`assets.extra/scope/`) keeps it when written again, unless another is
given. The version's model card and metrics (`assets.extra/model_card.md`, `metrics.json`) are
carried over: the weights and the answers are the same.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from services.trainer.artifact.drift_reference import reference_path
from services.trainer.artifact.export import SCOPE_DIR, export_for_serving
from services.trainer.modeling.config import CUSTOM
from services.trainer.modeling.model import GRADCAM_LAYER, build_network
from services.trainer.scope.model import PREFIX as SCOPE_PREFIX
from services.trainer.scope.model import ScopeScreen
from shared.contract import (
    ASSETS_EXTRA,
    GRADCAM_SIGNATURE,
    HEATMAP,
    INPUT_NAME,
    METRICS_FILE,
    MODEL_CARD_FILE,
    MODEL_INFO_FILE,
    SERVING_SIGNATURE,
)

# Fields `export_for_serving` writes itself; the rest of model_info.json is carried over.
_EXPORT_FIELDS = {"model_name", "version", "threshold", "temperature", "image_size",
                  "class_names", "ensemble_size", "scope", "batch_norm_folded", "gradcam_layer"}
# Files of `assets.extra` a re-export copies as they are (the export writes the others itself).
CARRIED_FILES = (MODEL_CARD_FILE, METRICS_FILE)
# The largest difference in any output allowed between the old and the new folder; the heatmap
# (0..1, drawn in 8-bit colour, a sum over 1280 channels) moves by about 1e-5 when BatchNorms are
# folded into their convolutions, far below one colour step (1/255).
PARITY_TOLERANCE = 1e-5
TOLERANCES = {HEATMAP: 1e-3}


def _plain(name: str) -> str:
    """A variable's path without TF's `:0` and Keras's per-instance `_N` name suffixes."""
    return re.sub(r"_\d+(?=/|$)", "", name.split(":")[0])


def read_model_info(model_dir: Path) -> dict:
    path = model_dir / ASSETS_EXTRA / MODEL_INFO_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir} has no {ASSETS_EXTRA}/{MODEL_INFO_FILE}: not our export")
    return json.loads(path.read_text())


def rebuild_members(model_dir: Path, info: dict) -> list[keras.Model]:
    """The Keras networks inside an exported version, with its weights."""
    loaded = tf.saved_model.load(str(model_dir))
    # Every network is tracked twice (itself and its Grad-CAM view); keep each variable once,
    # in the order the export tracked them: member by member.
    variables = list({id(v): v for v in loaded.variables}.values())
    # A scope screen is tracked last: its variables (named with its prefix, plus its dropout's
    # seed state) follow the pneumonia networks'.
    first_scope = next((i for i, v in enumerate(variables)
                        if _plain(v.name).startswith(SCOPE_PREFIX)), len(variables))
    foreign = [v.name for v in variables[first_scope:] if not (
        _plain(v.name).startswith(SCOPE_PREFIX) or "seed_generator" in v.name)]
    if foreign:
        raise ValueError(f"{model_dir}: variables {foreign} follow the scope screen's")
    variables = variables[:first_scope]
    width = int(variables[0].shape[-1])  # the stem convolution's filters
    size = int(info["image_size"])
    count = int(info.get("ensemble_size", 1))
    equalize = bool(info.get("equalize", False))  # histogram equalisation has no variables
    backbone = str(info.get("backbone", CUSTOM))
    folded = bool(info.get("batch_norm_folded", False))
    internal = info.get("internal_size")

    def build(dropout: float) -> keras.Model:
        return build_network(backbone, image_size=size, width=width, dropout=dropout,
                             equalize=equalize, imagenet=False, folded=folded,
                             internal_size=int(internal) if internal else None)

    # A network trained with dropout also carries its dropout seed's state variable.
    candidates = {rate: len(build(rate).variables) for rate in (0.3, 0.0)}
    fitting = [rate for rate, per in candidates.items() if per * count == len(variables)]
    if not fitting:
        raise ValueError(f"{model_dir} holds {len(variables)} variables; {count} network(s) of "
                         f"this architecture would hold one of "
                         f"{sorted(per * count for per in candidates.values())}")
    dropout, per_model = fitting[0], candidates[fitting[0]]
    members = []
    for index in range(count):
        model = build(dropout)
        for target, source in zip(model.variables,
                                  variables[index * per_model:(index + 1) * per_model],
                                  strict=True):
            if _plain(source.name) != _plain(target.path) or source.shape != target.shape:
                raise ValueError(f"variable {source.name} {source.shape} does not fit "
                                 f"{target.path} {target.shape}")
            target.assign(source.numpy())
        members.append(model)
    return members


def output_differences(old_dir: Path, new_dir: Path, images: np.ndarray) -> dict[str, float]:
    """The largest absolute difference of each output both folders' signatures share."""
    old, new = tf.saved_model.load(str(old_dir)), tf.saved_model.load(str(new_dir))
    worst: dict[str, float] = {}
    for name in (SERVING_SIGNATURE, GRADCAM_SIGNATURE):
        before = old.signatures[name](**{INPUT_NAME: tf.constant(images)})
        after = new.signatures[name](**{INPUT_NAME: tf.constant(images)})
        for key in before:
            difference = float(np.max(np.abs(before[key].numpy() - after[key].numpy())))
            worst[key] = max(worst.get(key, 0.0), difference)
    return worst


def max_output_difference(old_dir: Path, new_dir: Path, images: np.ndarray) -> float:
    """The largest absolute difference of any output both folders' signatures share."""
    return max(output_differences(old_dir, new_dir, images).values())


def carry_drift_reference(model_dir: Path, target: Path) -> None:
    """The version's drift reference goes with it: the outputs it describes are the same."""
    source = reference_path(model_dir)
    if source.is_file():
        destination = reference_path(target)
        partial = destination.with_name(destination.name + ".partial")
        shutil.copyfile(source, partial)
        partial.replace(destination)


def reexport(model_dir: Path, base_path: Path, version: int, images: np.ndarray,
             scope: ScopeScreen | None = None) -> tuple[Path, float]:
    """Export `model_dir` again as `<base_path>/<name>/<version>/`; its outputs must match.

    `scope` adds (or replaces) the scope screen; without it a screen the version holds is kept.
    """
    info = read_model_info(model_dir)
    scope_dir = model_dir / ASSETS_EXTRA / SCOPE_DIR
    if scope is None and scope_dir.is_dir():
        scope = ScopeScreen.load(scope_dir)
    members = rebuild_members(model_dir, info)
    extra = {key: value for key, value in info.items() if key not in _EXPORT_FIELDS}
    extra["reexported_from_version"] = int(info["version"])
    target = export_for_serving(
        members, base_path=base_path, version=version, threshold=float(info["threshold"]),
        temperature=float(info["temperature"]), model_name=info["model_name"], extra_info=extra,
        scope=scope,
    )
    carry_drift_reference(model_dir, target)
    differences = output_differences(model_dir, target, images)
    if read_model_info(target)["gradcam_layer"] != info.get("gradcam_layer", GRADCAM_LAYER):
        differences.pop(HEATMAP, None)  # explained on another map: a new heatmap, not a regression
    beyond = {key: value for key, value in differences.items()
              if value > TOLERANCES.get(key, PARITY_TOLERANCE)}
    if beyond:
        worst = ", ".join(f"{key} {value:.2e}" for key, value in beyond.items())
        raise ValueError(f"the re-export answers differently ({worst}); "
                         f"left in {target} for inspection")
    difference = max(differences.values())
    for name in CARRIED_FILES:
        source = model_dir / ASSETS_EXTRA / name
        if source.is_file():
            shutil.copyfile(source, target / ASSETS_EXTRA / name)
    return target, difference
