"""`decode_xray`: bytes of a JPEG, PNG or DICOM upload to 2-D uint8 pixels and metadata."""

from __future__ import annotations

from shared.imaging.dicom import decode_dicom
from shared.imaging.formats import DICOM, detect_format
from shared.imaging.limits import DecodedImage, DecodeLimits
from shared.imaging.raster import decode_raster


def decode_xray(data: bytes, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode an upload; the format comes from the bytes, never from a file name.

    Raises a `shared.errors.ImageError` subclass for anything that is not a usable X-ray.
    `limits` defaults to the ones in the process settings.
    """
    limits = limits or DecodeLimits.from_settings()
    data = bytes(data)
    limits.check_bytes(len(data))
    image_format = detect_format(data)
    if image_format == DICOM:
        return decode_dicom(data, limits)
    return decode_raster(data, image_format, limits)
