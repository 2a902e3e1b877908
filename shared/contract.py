"""The model contract: what the trainer exports and what every service reads from it.

One home for the served model's signatures, tensor names, class order, artifact file names and
registry names. Producers (the trainer's export) and consumers (worker, gateway, model server,
evaluation) import these; nobody writes the strings again. No TensorFlow import here.
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "cxr-pneumonia"

# Signatures of the exported SavedModel; both take INPUT_NAME: uint8 [N, S, S, 1].
SERVING_SIGNATURE = "serving_default"
GRADCAM_SIGNATURE = "gradcam"
INPUT_NAME = "image"

# Outputs of both signatures (GRADCAM_SIGNATURE adds HEATMAP).
PNEUMONIA_PROBABILITY = "pneumonia_probability"  # [N] float32
CLASS_PROBABILITIES = "class_probabilities"  # [N, len(CLASS_NAMES)] float32, CLASS_NAMES order
THRESHOLD = "threshold"  # [N] float32: the model's own operating point
HEATMAP = "heatmap"  # [N, S, S] float32 in 0..1

# The network's classes, in the order of its logits and of CLASS_PROBABILITIES.
CLASS_NAMES: tuple[str, ...] = ("normal", "bacterial", "viral")
NORMAL_CLASS = 0
PNEUMONIA_CLASSES = (1, 2)
# Label code of a pneumonia film whose subtype is not known (after the real classes).
UNKNOWN_SUBTYPE = len(CLASS_NAMES)

# What a served version folder holds beside the SavedModel (`<version>/assets.extra/...`).
ASSETS_EXTRA = "assets.extra"
MODEL_INFO_FILE = "model_info.json"
WARMUP_FILE = "tf_serving_warmup_requests"

# MLflow Model Registry aliases and TF Serving version labels.
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"


def pneumonia_probability(class_probabilities: Any) -> Any:
    """p(pneumonia) from CLASS_PROBABILITIES rows (last axis): the pneumonia classes' sum.

    Works on NumPy arrays and TensorFlow tensors alike, so export and evaluation share it.
    """
    first, *rest = PNEUMONIA_CLASSES
    total = class_probabilities[..., first]
    for index in rest:
        total = total + class_probabilities[..., index]
    return total
