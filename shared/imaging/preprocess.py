"""The only preprocessing: resize decoded pixels to the model's square uint8 input.

Both the trainer's input pipeline and the worker call `to_model_input`; intensity normalisation
lives inside the exported model. The aspect ratio is not kept, because the training images were
squashed to a square the same way.

Filter: Pillow's BILINEAR. Pillow widens the filter's support by the scale factor when shrinking,
so a 2,000-pixel radiograph is averaged over every source pixel (no aliasing), and the result is
bit-for-bit deterministic for the same input and Pillow version.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESAMPLING_FILTER = Image.Resampling.BILINEAR


def to_model_input(pixels: np.ndarray, size: int = 224) -> np.ndarray:
    """Resize 2-D uint8 `pixels` (or `(H, W, 1)`) to a `(size, size, 1)` uint8 array."""
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got an array of shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {array.dtype}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if array.shape != (size, size):
        image = Image.fromarray(np.ascontiguousarray(array))
        array = np.asarray(image.resize((size, size), RESAMPLING_FILTER))
    return np.ascontiguousarray(array, dtype=np.uint8).reshape(size, size, 1)
