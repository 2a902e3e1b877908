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
# The version's own model card and evaluation metrics (`{"metrics": {name: number}, ...}`): what
# `GET /v1/models/current` shows when no MLflow run holds them (a bundled version).
MODEL_CARD_FILE = "model_card.md"
METRICS_FILE = "metrics.json"
# The model's reference distribution for the drift check (shared/drift.py), computed on its
# validation (gate) films: `<version>/assets.extra/drift_reference.json`.
DRIFT_REFERENCE_FILE = "drift_reference.json"

# MLflow Model Registry aliases and TF Serving version labels.
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"
SHADOW_LABEL = "shadow"  # a version that scores live jobs without answering (shared/shadow.py)


def pneumonia_probability(class_probabilities: Any) -> Any:
    """p(pneumonia) from CLASS_PROBABILITIES rows (last axis): the pneumonia classes' sum.

    Works on NumPy arrays and TensorFlow tensors alike, so export and evaluation share it.
    """
    first, *rest = PNEUMONIA_CLASSES
    total = class_probabilities[..., first]
    for index in rest:
        total = total + class_probabilities[..., index]
    return total


# --- Scope screening (docs/model.md, "Scope") ---------------------------------------------------
# Reasons a film is outside what the model was validated on. Stable codes: they appear in API
# answers, DICOM SRs and metrics labels. Producers: pixel checks at decode, DICOM header hints and
# the served model's own screening outputs below.
NOT_CHEST_RADIOGRAPH = "not_chest_radiograph"  # photographs, documents, CT/MR/US, other body parts
BLANK_IMAGE = "blank_image"  # flat or nearly flat pixels
NOISE_IMAGE = "noise_image"  # no spatial structure
COLOUR_IMAGE = "colour_image"  # real colour content: a photograph or screenshot
LATERAL_VIEW = "lateral_view"
ROTATED = "rotated"  # not upright (90, 180 or 270 degrees)
INVERTED = "inverted"  # negative intensities (bone dark)
ADULT = "adult"  # the model was validated on children
ATYPICAL_IMAGE = "atypical_image"  # far from the training films in the screening network's space
SCOPE_REASONS: tuple[str, ...] = (
    NOT_CHEST_RADIOGRAPH, BLANK_IMAGE, NOISE_IMAGE, COLOUR_IMAGE, LATERAL_VIEW, ROTATED, INVERTED,
    ADULT, ATYPICAL_IMAGE,
)
# Reasons that refuse the film (no label at all); every other reason answers with a flag.
REFUSING_REASONS = frozenset({NOT_CHEST_RADIOGRAPH, BLANK_IMAGE, NOISE_IMAGE, COLOUR_IMAGE,
                              LATERAL_VIEW})
# Problem-details / job-failure code of a refused film.
NOT_A_CHEST_RADIOGRAPH_CODE = "not_a_chest_radiograph"

# The served model's screening: extra outputs of both signatures, one column per SCOPE_CHECKS
# entry; a score at or above its threshold raises that reason. A model without these outputs
# screens nothing itself (pixel checks and headers still apply).
SCOPE_SCORES = "scope_scores"  # [N, len(SCOPE_CHECKS)] float32
SCOPE_THRESHOLDS = "scope_thresholds"  # [N, len(SCOPE_CHECKS)] float32
SCOPE_CHECKS: tuple[str, ...] = (NOT_CHEST_RADIOGRAPH, LATERAL_VIEW, ROTATED, INVERTED, ADULT,
                                 ATYPICAL_IMAGE)

# --- Site operating points (docs/model.md, "Sites") ---------------------------------------------
# A site's calibration and threshold for one version, published beside the SavedModel:
# `<version>/assets.extra/sites/<site>/operating_point.json`.
SITES_DIR = "sites"
OPERATING_POINT_FILE = "operating_point.json"
DEFAULT_SITE = "default"
