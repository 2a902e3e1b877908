"""The HOG baseline: histogram-of-oriented-gradients features and a calibrated linear classifier.

Features come from the same 224 px model inputs as the CNN (`shared.imaging`), downscaled to
`HOG_SIZE` px for speed: 9 orientations, 16 px cells, 2x2-cell blocks (L2-Hys), 1,764 numbers per
image. The classifier is scikit-learn's StandardScaler + LogisticRegression, its probabilities
calibrated by CalibratedClassifierCV (sigmoid) on patient-grouped folds. It answers pneumonia vs
normal; its metrics are measured on the same validation images as the CNN's.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import hog
from skimage.transform import resize
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from services.trainer.data.dataset import map_with_progress

HOG_SIZE = 128
CALIBRATION_FOLDS = 3


def hog_features(images: np.ndarray, size: int = HOG_SIZE) -> np.ndarray:
    """[N, F] float32 HOG descriptors of uint8 images [N, S, S, 1]."""

    def describe(image: np.ndarray) -> np.ndarray:
        small = resize(image[..., 0], (size, size), anti_aliasing=True, preserve_range=True)
        return hog(small, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2),
                   block_norm="L2-Hys", feature_vector=True).astype(np.float32)

    return np.stack(map_with_progress(describe, list(images), "HOG features"))


def fit_hog_baseline(features: np.ndarray, is_pneumonia: np.ndarray, groups: np.ndarray,
                     seed: int = 0) -> CalibratedClassifierCV:
    """A calibrated logistic regression on HOG features; calibration folds never split a patient."""
    folds = min(CALIBRATION_FOLDS, len(np.unique(groups)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(features, is_pneumonia, groups))
    classifier = make_pipeline(
        StandardScaler(),
        LogisticRegression(C=0.01, class_weight="balanced", max_iter=2000, random_state=seed),
    )
    calibrated = CalibratedClassifierCV(classifier, method="sigmoid", cv=splits)
    return calibrated.fit(features, is_pneumonia)


def pneumonia_probability(model: CalibratedClassifierCV, features: np.ndarray) -> np.ndarray:
    """p(pneumonia) per image from a fitted baseline."""
    return model.predict_proba(features)[:, list(model.classes_).index(1)]
