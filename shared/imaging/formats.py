"""Recognising an upload's format from its first bytes (never from its name or content type)."""

from __future__ import annotations

import struct

from shared.errors import EmptyUploadError, NotAnImageError, UnsupportedFormatError

JPEG = "jpeg"
PNG = "png"
DICOM = "dicom"

_ACCEPTED_SIGNATURES = ((b"\xff\xd8\xff", JPEG), (b"\x89PNG\r\n\x1a\n", PNG))

# Recognised but refused, with the name a user will know.
_REFUSED_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF-", "PDF document"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
)

# A DICOM file written without the 128-byte preamble and "DICM" starts with its first element:
# the file meta group (0002) or, for old implicit-VR files, usually the identifying group (0008).
_RAW_DICOM_FIRST_GROUPS = {0x0002, 0x0008}


def detect_format(data: bytes) -> str:
    """'jpeg', 'png' or 'dicom'; refuses everything else with a typed error."""
    if not data:
        raise EmptyUploadError()
    for signature, name in _ACCEPTED_SIGNATURES:
        if data.startswith(signature):
            return name
    if len(data) >= 132 and data[128:132] == b"DICM":
        return DICOM
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        raise UnsupportedFormatError(_refusal("WebP"))
    if data.startswith(b"BM") and data[6:10] == b"\x00\x00\x00\x00":  # BMP: reserved bytes zero
        raise UnsupportedFormatError(_refusal("BMP"))
    for signature, name in _REFUSED_SIGNATURES:
        if data.startswith(signature):
            raise UnsupportedFormatError(_refusal(name))
    if looks_like_raw_dicom(data):
        return DICOM
    raise NotAnImageError()


def looks_like_raw_dicom(data: bytes) -> bool:
    """A cheap check of the first element header; the DICOM decoder then parses for real."""
    if len(data) < 8:
        return False
    group, element = struct.unpack("<HH", data[:4])
    if group not in _RAW_DICOM_FIRST_GROUPS or element > 0x0020:
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True  # explicit VR little endian
    (length,) = struct.unpack("<I", data[4:8])  # implicit VR: a 4-byte length
    return length < len(data)


def _refusal(name: str) -> str:
    return (
        f"The file is a {name}, which the service does not accept; send the X-ray as JPEG, PNG or "
        "DICOM."
    )
