"""The size limits every decoded upload must respect, and the decoded image itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.config import SharedSettings, get_settings
from shared.contract import SCOPE_REASONS
from shared.errors import ImageTooLargeError, ImageTooSmallError
from shared.imaging.pixel_checks import PixelStats


@dataclass(frozen=True)
class DecodeLimits:
    """Bytes, pixels (decompression bombs) and smallest side accepted by `decode_xray`."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000
    min_side: int = 64

    @classmethod
    def from_settings(cls, settings: SharedSettings | None = None) -> DecodeLimits:
        settings = settings or get_settings()
        return cls(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side)

    def check_bytes(self, size: int) -> None:
        if size > self.max_bytes:
            raise ImageTooLargeError(
                f"The file is {size:,} bytes; the largest accepted upload is "
                f"{self.max_bytes:,} bytes."
            )

    def check_dimensions(self, width: int, height: int) -> None:
        """Called with the size read from the header, before any pixel data is decoded."""
        if width * height > self.max_pixels:
            raise ImageTooLargeError(
                f"The image is {width} x {height} pixels; the largest accepted image has "
                f"{self.max_pixels:,} pixels. Send a smaller export."
            )
        if min(width, height) < self.min_side:
            raise ImageTooSmallError(
                f"The image is {width} x {height} pixels; each side must be at least "
                f"{self.min_side} pixels. Send the full-resolution X-ray, not a thumbnail."
            )


@dataclass
class DecodedImage:
    """A decoded X-ray: 2-D uint8 pixels (0 black .. 255 white), its source format and metadata.

    `pixel_stats` (shared.imaging.pixel_checks) and `header_reasons` (DICOM header hints) are what
    the decoder found about the film's scope; `scope_reasons` joins them.
    """

    pixels: np.ndarray
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    pixel_stats: PixelStats | None = None
    header_reasons: tuple[str, ...] = ()

    @property
    def scope_reasons(self) -> tuple[str, ...]:
        pixel = self.pixel_stats.reasons() if self.pixel_stats is not None else ()
        found = set(pixel) | set(self.header_reasons)
        return tuple(reason for reason in SCOPE_REASONS if reason in found)
