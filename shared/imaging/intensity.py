"""Mapping wide-range intensities (16-bit PNG, DICOM after its LUTs) linearly onto 0..255."""

from __future__ import annotations

import numpy as np


def rescale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map `low` to 0 and `high` to 255 linearly, clipping outside; a flat range gives zeros."""
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(low) or not np.isfinite(high) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
