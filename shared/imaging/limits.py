"""The size limits every decoded upload must respect, and the decoded image itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.contract import SCOPE_REASONS
from shared.errors import ImageTooLargeError, ImageTooSmallError
from shared.imaging.pixel_checks import PixelStats
from shared.settings import SharedSettings, get_settings


@dataclass(frozen=True)
class DecodeLimits:
    """Bytes, pixels (decompression bombs) and smallest side accepted by `decode_xray`, and the
    structure of a DICOM instance (nesting, element count and size, decoding memory)."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 100_000_000
    min_side: int = 64
    max_dicom_depth: int = 12
    max_dicom_elements: int = 10_000
    max_dicom_element_bytes: int = 8 * 1024 * 1024
    max_decode_memory_bytes: int = 1024 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: SharedSettings | None = None) -> DecodeLimits:
        settings = settings or get_settings()
        return cls(settings.max_upload_bytes, settings.max_image_pixels, settings.min_image_side,
                   settings.max_dicom_depth, settings.max_dicom_elements,
                   settings.max_dicom_element_bytes, settings.max_decode_memory_bytes)

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

    def check_decode_memory(self, width: int, height: int, samples: int,
                            bits_allocated: int) -> None:
        """Refuse, before decoding, pixels whose decoding would need more than the budget.

        Decoding holds the stored samples, two float64 working copies of the modality and VOI
        LUT steps and the 8-bit result at once; that sum is what the budget bounds.
        """
        stored = width * height * samples * max(1, (bits_allocated + 7) // 8)
        needed = stored + width * height * (2 * 8 + 1)
        if needed > self.max_decode_memory_bytes:
            raise ImageTooLargeError(
                f"The image is {width} x {height} pixels ({samples} sample(s) of "
                f"{bits_allocated} bits); decoding it would need {needed / 2**20:,.0f} MiB, "
                f"more than the {self.max_decode_memory_bytes / 2**20:,.0f} MiB allowed per "
                "image. Send a smaller export."
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
