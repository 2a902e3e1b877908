"""What one decoded image of the data set tells: size, intensity histogram, pixel digest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.trainer.data.dataset import pixel_digest, read_pixels
from services.trainer.data.records import XrayRecord


@dataclass(frozen=True)
class ImageFacts:
    """What one decoded image tells, kept small so the whole data set fits in memory."""

    width: int
    height: int
    digest: str
    histogram: np.ndarray  # 256 pixel counts


def inspect_image(record: XrayRecord) -> ImageFacts:
    pixels = read_pixels(record)
    return ImageFacts(
        width=int(pixels.shape[1]),
        height=int(pixels.shape[0]),
        digest=pixel_digest(pixels),
        histogram=np.bincount(pixels.ravel(), minlength=256),
    )
