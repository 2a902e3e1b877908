"""Cheap pixel statistics that say a decoded upload cannot be a radiograph.

Three checks, each on a strided sample of at most `SAMPLE_SIDE` pixels a side (a stride keeps
independent pixels independent, so noise stays noise, and the cost stays flat with film size):

- COLOUR_IMAGE: the share of sampled pixels whose chroma (max - min of R, G, B) exceeds
  `CHROMA_LEVEL` reaches `COLOUR_MIN_FRACTION`. A grey film saved as RGB has chroma 0 (a few
  levels after JPEG), so it passes.
- BLANK_IMAGE: the robust spread (99th minus 1st percentile of the grey levels) is below
  `BLANK_MAX_SPREAD`: flat or nearly flat, e.g. a DICOM whose window maps every pixel to one value.
- NOISE_IMAGE: the mean of the horizontal and vertical lag-1 correlations of the grey sample is
  below `NOISE_MAX_CORRELATION`: no spatial structure.

The thresholds and the measurements behind them: docs/model.md, "Pixel checks"
(`python -m bench.pixel_checks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from shared.contract import BLANK_IMAGE, COLOUR_IMAGE, NOISE_IMAGE

SAMPLE_SIDE = 128
CHROMA_LEVEL = 24
COLOUR_MIN_FRACTION = 0.05
BLANK_MAX_SPREAD = 16
NOISE_MAX_CORRELATION = 0.5


@dataclass(frozen=True)
class PixelStats:
    """The statistics the checks compare with their thresholds (colour_fraction None for grey)."""

    spread: int
    correlation: float | None
    colour_fraction: float | None = None

    def reasons(self) -> tuple[str, ...]:
        found: list[str] = []
        if self.colour_fraction is not None and self.colour_fraction >= COLOUR_MIN_FRACTION:
            found.append(COLOUR_IMAGE)
        if self.spread < BLANK_MAX_SPREAD:
            found.append(BLANK_IMAGE)
        elif self.correlation is not None and self.correlation < NOISE_MAX_CORRELATION:
            found.append(NOISE_IMAGE)
        return tuple(found)


def sample(pixels: np.ndarray, side: int = SAMPLE_SIDE) -> np.ndarray:
    """Every k-th row and column, k chosen so that the longer side keeps at most `side` pixels."""
    stride = max(1, -(-max(pixels.shape[:2]) // side))
    return np.ascontiguousarray(pixels[::stride, ::stride])


def colour_sample(image: Image.Image, side: int = SAMPLE_SIDE) -> np.ndarray:
    """The same sample as `sample`, taken from a Pillow image of any colour mode, as RGB."""
    width, height = image.size
    stride = max(1, -(-max(width, height) // side))
    small = image.resize((-(-width // stride), -(-height // stride)), Image.Resampling.NEAREST)
    return np.asarray(small.convert("RGB"))


def colour_fraction(rgb: np.ndarray) -> float:
    """The share of pixels of an (H, W, 3) array with chroma above `CHROMA_LEVEL`."""
    channels = sample(rgb)
    red, green, blue = channels[..., 0], channels[..., 1], channels[..., 2]
    # np.maximum over the three planes: a reduce over a last axis of length 3 is ~50x slower.
    chroma = (np.maximum(np.maximum(red, green), blue).astype(np.int16)
              - np.minimum(np.minimum(red, green), blue))
    return float(np.count_nonzero(chroma > CHROMA_LEVEL)) / max(1, chroma.size)


def robust_spread(gray: np.ndarray) -> int:
    """99th minus 1st percentile of uint8 grey levels (from the histogram: no sort)."""
    counts = np.cumsum(np.bincount(gray.ravel(), minlength=256))
    total = int(counts[-1])
    low = int(np.searchsorted(counts, 0.01 * total, side="left"))
    high = int(np.searchsorted(counts, 0.99 * total, side="left"))
    return high - low


def neighbour_correlation(gray: np.ndarray) -> float | None:
    """Mean Pearson correlation of each pixel with its right and its lower neighbour.

    None when the image is constant along both directions (no variance to correlate).
    """
    values = gray.astype(np.float32)
    values -= values.mean()
    found = []
    for a, b in ((values[:, :-1], values[:, 1:]), (values[:-1, :], values[1:, :])):
        denominator = float(np.sqrt(np.vdot(a, a) * np.vdot(b, b)))
        if denominator > 0:
            found.append(float(np.vdot(a, b)) / denominator)
    return float(np.mean(found)) if found else None


def pixel_stats(gray: np.ndarray, rgb: np.ndarray | None = None) -> PixelStats:
    """The statistics of a decoded image: 2-D uint8 grey, and its RGB form for a colour source."""
    small = sample(gray)
    return PixelStats(
        spread=robust_spread(small),
        correlation=neighbour_correlation(small),
        colour_fraction=None if rgb is None else colour_fraction(rgb),
    )


def pixel_reasons(gray: np.ndarray, rgb: np.ndarray | None = None) -> tuple[str, ...]:
    """The scope reasons (shared.contract codes) the pixels alone raise; () for a plausible film."""
    return pixel_stats(gray, rgb).reasons()
