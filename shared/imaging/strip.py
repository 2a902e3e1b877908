"""JPEG and PNG files without the metadata that can carry a name, pixels untouched.

Byte-level: segments (JPEG) and chunks (PNG) are copied or dropped, the compressed image data is
copied as it is, so nothing is re-encoded. What stays is what decoding needs: the JFIF header
(without its thumbnail), the Adobe segment (colour transform), the EXIF orientation (rewritten as
an EXIF block holding that one tag), and in PNG the critical chunks and those describing colour,
transparency and pixel size. Dropped: every other APPn (EXIF, XMP, ICC, IPTC, MPF, vendor blocks),
COM, PNG text (tEXt, iTXt, zTXt), eXIf, tIME and any chunk not known to be safe; anything after
the end of the image.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from shared.errors import CorruptImageError

# JPEG markers
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_APP0, _APP1, _APP14, _APP15, _COM = 0xE0, 0xE1, 0xEE, 0xEF, 0xFE
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_EXIF_ORIENTATION = 0x0112

# PNG chunks kept: the critical ones, and the ancillary ones that change how pixels are shown.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB",
                       b"sBIT", b"bKGD", b"pHYs"})


def strip_metadata(data: bytes, image_format: str) -> bytes:
    """`data` without metadata segments/chunks; `image_format` is 'jpeg' or 'png'."""
    orientation = _exif_orientation(data)
    if image_format == "jpeg":
        return strip_jpeg(data, orientation)
    if image_format == "png":
        return strip_png(data, orientation)
    raise ValueError(f"not a raster format: {image_format}")


def _exif_orientation(data: bytes) -> int:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - an unreadable EXIF block means no orientation
        return 1


def _tiff_orientation(orientation: int) -> bytes:
    """A little-endian TIFF header with one IFD holding only the Orientation tag."""
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHIHH", _EXIF_ORIENTATION, 3, 1, orientation, 0)
            + struct.pack("<I", 0))


def _damaged(what: str) -> CorruptImageError:
    return CorruptImageError(f"The JPEG file is damaged ({what}); export it again and resend it.")


def strip_jpeg(data: bytes, orientation: int = 1) -> bytes:
    if not data.startswith(b"\xff\xd8"):
        raise _damaged("no start-of-image marker")
    out = bytearray(b"\xff\xd8")
    if orientation != 1:
        exif = b"Exif\x00\x00" + _tiff_orientation(orientation)
        out += _segment(_APP1, exif)
    position = 2
    while True:
        if position >= len(data):  # image data without an end marker: Pillow decoded it
            out += b"\xff\xd9"
            return bytes(out)
        marker, position = _next_marker(data, position)
        if marker == _EOI:
            out += b"\xff\xd9"
            return bytes(out)
        if marker in _STANDALONE:
            out += bytes((0xFF, marker))
            continue
        if position + 2 > len(data):
            raise _damaged("cut off inside a segment header")
        (length,) = struct.unpack(">H", data[position:position + 2])
        end = position + length
        if length < 2 or end > len(data):
            raise _damaged("a segment runs past the end of the file")
        body = data[position + 2:end]
        kept = _kept_segment(marker, body)
        if kept is not None:
            out += _segment(marker, kept)
        position = end
        if marker == _SOS:  # entropy-coded data follows, up to the next real marker
            scan_end = _scan_end(data, position)
            out += data[position:scan_end]
            position = scan_end


def _segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def _next_marker(data: bytes, position: int) -> tuple[int, int]:
    """The marker at `position` (fill bytes 0xFF skipped) and the position after it."""
    if position >= len(data) or data[position] != 0xFF:
        raise _damaged("a marker was expected")
    while position < len(data) and data[position] == 0xFF:
        position += 1
    if position >= len(data):
        raise _damaged("cut off after a marker")
    return data[position], position + 1


def _scan_end(data: bytes, position: int) -> int:
    """Where the entropy-coded data that starts at `position` ends (its next marker)."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return len(data)
        following = data[position + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
            position += 1 if following == 0xFF else 2
            continue
        return position


def _kept_segment(marker: int, body: bytes) -> bytes | None:
    """The body to write for this segment, or None to drop it."""
    if marker == _COM or (_APP0 <= marker <= _APP15 and marker not in (_APP0, _APP14)):
        return None
    if marker == _APP0:
        # JFIF: identifier, version, units, densities; the thumbnail is dropped. JFXX and others go.
        if body.startswith(b"JFIF\x00") and len(body) >= 14:
            return body[:12] + b"\x00\x00"
        return None
    if marker == _APP14:
        # Adobe: version, flags, colour transform (how CMYK/YCCK are decoded).
        return body[:12] if body.startswith(b"Adobe") and len(body) >= 12 else None
    return body


def strip_png(data: bytes, orientation: int = 1) -> bytes:
    if not data.startswith(_PNG_SIGNATURE):
        raise CorruptImageError("The PNG file has no PNG signature; export it again.")
    out = bytearray(_PNG_SIGNATURE)
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            raise CorruptImageError("The PNG file is cut off inside a chunk; export it again.")
        if kind == b"IDAT" and orientation != 1:
            out += _png_chunk(b"eXIf", _tiff_orientation(orientation))
            orientation = 1  # written once, before the first IDAT
        if kind in _PNG_KEPT:
            out += data[position:end]
        position = end
        if kind == b"IEND":
            return bytes(out)
    raise CorruptImageError("The PNG file has no IEND chunk; export it again.")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
