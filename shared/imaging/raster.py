"""JPEG and PNG decoding with Pillow: size checked from the header, then decoded to 8-bit gray."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import CorruptImageError, ImageTooLargeError, UnsupportedFormatError
from shared.imaging.intensity import rescale_to_uint8
from shared.imaging.limits import DecodedImage, DecodeLimits
from shared.imaging.pixel_checks import colour_sample, pixel_stats

log = logging.getLogger("cxr.imaging")
_EXPECTED_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}
_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}
_DECLARED_PIXELS = re.compile(r"Image size \((\d+) pixels\)")
_GRAY_MODES = {"1", "L", "LA", "La", *_HIGH_DEPTH_MODES}
# EXIF Orientation (TIFF tag 274) 2..8 -> the transpose that shows the image upright.
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def decode_raster(data: bytes, image_format: str, limits: DecodeLimits) -> DecodedImage:
    """Decode JPEG or PNG bytes already identified by their magic number."""
    # verify() checks the structure (PNG chunk CRCs and order) and leaves its image unusable,
    # so the pixels come from a second, lazily opened image.
    with _corrupt_on_failure(image_format):
        _open(data, image_format, limits).verify()
    image = _open(data, image_format, limits)
    with _corrupt_on_failure(image_format):
        image.load()
    orientation = exif_orientation(image)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    pixels, bit_depth = _to_gray(image)
    stats = pixel_stats(pixels, None if image.mode in _GRAY_MODES else colour_sample(image))
    height, width = pixels.shape
    metadata = {
        "format": image_format,
        "width": width,
        "height": height,
        "bit_depth": bit_depth,
        "mode": image.mode,
        "exif_orientation": orientation,
    }
    return DecodedImage(pixels=pixels, format=image_format, metadata=metadata, pixel_stats=stats)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation, 1..8, when it is a well-formed integer; anything else counts as 1.

    Real files carry orientations typed ASCII, RATIONAL (zero denominators too) or UNDEFINED, and
    PNG eXIf chunks that hold no TIFF structure at all: the image is then read as stored.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about malformed EXIF, then goes on
            value = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - any EXIF parse failure means "no orientation"
        return 1
    if isinstance(value, tuple) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 8:
        return 1
    return value


def _open(data: bytes, image_format: str, limits: DecodeLimits) -> Image.Image:
    """Open lazily (header only) and check the declared size before any pixel is decoded."""
    try:
        with warnings.catch_warnings(), _corrupt_on_failure(image_format):
            # Our own pixel limit below is the one that counts; Pillow's global one is a backstop.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[_EXPECTED_PIL_FORMAT[image_format]])
    except Image.DecompressionBombError as exc:
        # Pillow's own limit is in its message; the client needs ours (and the declared count).
        declared = _DECLARED_PIXELS.search(str(exc))
        count = f"{int(declared.group(1)):,} pixels" if declared else "too many pixels"
        raise ImageTooLargeError(
            f"The image declares {count}; the largest accepted image has "
            f"{limits.max_pixels:,} pixels. Send a smaller export."
        ) from exc
    width, height = image.size
    limits.check_dimensions(width, height)
    return image


@contextmanager
def _corrupt_on_failure(image_format: str) -> Iterator[None]:
    try:
        yield
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow's own words describe its code, not the file: they go to the log only.
        log.info("%s refused as damaged: %s: %s", image_format, type(exc).__name__, exc)
        reason = ("its header cannot be read" if isinstance(exc, UnidentifiedImageError)
                  else "its data cannot be decoded")
        raise CorruptImageError(
            f"The {image_format.upper()} file is damaged or cut off ({reason}); "
            "export it again and resend it."
        ) from exc


def _to_gray(image: Image.Image) -> tuple[np.ndarray, int]:
    """2-D uint8 pixels and the source's bit depth; alpha is dropped, colour becomes luma.

    Alpha is dropped rather than composited: exported radiographs are opaque, and compositing
    would invent a background colour that the model never saw.
    """
    mode = image.mode
    if mode in _HIGH_DEPTH_MODES:
        values = np.asarray(image)
        bit_depth = 16 if "16" in mode else 32
        return rescale_to_uint8(values, float(values.min()), float(values.max())), bit_depth
    if mode == "1":
        return np.asarray(image.convert("L")), 1
    if mode in ("P", "PA"):
        image = image.convert("RGBA")  # the palette lookup; alpha is then ignored by convert("L")
    elif mode in ("LA", "La"):
        image = image.getchannel("L")
    elif mode not in ("L", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise UnsupportedFormatError(
            f"Images in Pillow mode {mode!r} are not accepted; send 8- or 16-bit gray or RGB."
        )
    return np.asarray(image.convert("L")), 8

