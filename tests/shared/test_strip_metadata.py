"""JPEG and PNG metadata removal: a name in every place a file can carry one, gone; pixels and
compressed image data unchanged; EXIF orientation still applied."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, PngImagePlugin

from shared.errors import CorruptImageError
from shared.imaging import DecodeLimits, decode_xray
from shared.imaging.strip import strip_metadata
from tests.gateway.uploads import sample_xray
from tests.shared.xray_files import gradient

NAME = "Qzpatient^Hilda"
LIMITS = DecodeLimits(max_bytes=50_000_000, max_pixels=100_000_000, min_side=16)


def xray() -> Image.Image:
    with Image.open(sample_xray()) as image:
        return image.convert("L").resize((200, 160))


def segment(marker: int, body: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(body) + 2) + body


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def exif_with_name(orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x013B] = NAME  # Artist
    exif[0x010E] = f"Chest of {NAME}"  # ImageDescription
    exif[0x0112] = orientation
    return exif


def icc_profile_named() -> bytes:
    """An sRGB profile with the name after it (profiles carry free-text descriptions)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes() + NAME.encode()


def jpeg_with_names(image: Image.Image, **options) -> bytes:
    """A JPEG with the name in EXIF, XMP, ICC, COM, a JFIF thumbnail, IPTC, APP15 and a trailer."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif_with_name(options.pop("orientation", 1)),
               icc_profile=icc_profile_named(), comment=f"patient {NAME}".encode(), **options)
    data = buffer.getvalue()
    xmp = (b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><dc:creator>" + NAME.encode()
           + b"</dc:creator></x:xmpmeta>")
    jfif_thumb = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x01\x01" + NAME.encode()[:3]
    extra = (segment(0xE1, xmp) + segment(0xED, b"Photoshop 3.0\x00" + NAME.encode())
             + segment(0xEF, NAME.encode()) + segment(0xFE, NAME.encode()))
    if data[2:4] == b"\xff\xe0":  # replace Pillow's JFIF header with one carrying a thumbnail
        (length,) = struct.unpack(">H", data[4:6])
        data = data[:2] + segment(0xE0, jfif_thumb) + data[4 + length:]
    return data[:2] + extra + data[2:] + f"trailer {NAME}".encode()


def png_with_names(image: Image.Image, orientation: int = 1) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", NAME)
    info.add_text("Comment", f"compressed {NAME} " * 20, zip=True)
    info.add_itxt("Description", f"international {NAME}", lang="en", tkey="Beschreibung")
    info.add_itxt("Title", f"compressed international {NAME} " * 20, zip=True)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info, exif=exif_with_name(orientation),
               icc_profile=icc_profile_named())
    data = buffer.getvalue()
    ihdr_end = 8 + 12 + 13
    extra = (png_chunk(b"tIME", struct.pack(">HBBBBB", 2026, 1, 2, 3, 4, 5))
             + png_chunk(b"prVt", NAME.encode()))
    return data[:ihdr_end] + extra + data[ihdr_end:] + f"trailer {NAME}".encode()


def png_chunk_types(data: bytes) -> list[bytes]:
    kinds, position = [], 8
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        kinds.append(kind)
        position += 12 + length
    return kinds


def jpeg_markers(data: bytes) -> list[int]:
    """The markers of the header segments, up to the first scan."""
    markers, position = [], 2
    while data[position + 1] != 0xDA:
        markers.append(data[position + 1])
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        position += 2 + length
    return markers


def entropy_coded(data: bytes) -> bytes:
    """Everything from the first scan to the end of image."""
    start = data.index(b"\xff\xda")
    return data[start:data.rindex(b"\xff\xd9") + 2]


@pytest.mark.parametrize("options", [{}, {"progressive": True}, {"subsampling": 0}],
                         ids=["baseline", "progressive", "no-subsampling"])
def test_jpeg_loses_every_name_and_keeps_its_pixels(options):
    data = jpeg_with_names(xray(), **options)
    assert data.count(NAME.encode()) >= 6  # EXIF (2), XMP, IPTC, APP15, COM, trailer

    stripped = strip_metadata(data, "jpeg")

    assert NAME.encode() not in stripped and NAME.encode()[:6] not in stripped
    assert set(jpeg_markers(stripped)) <= {0xE0, 0xDB, 0xC4, 0xC0, 0xC2, 0xDD}
    assert entropy_coded(stripped) in data  # the scans are copied, not re-encoded
    np.testing.assert_array_equal(decode_xray(stripped, LIMITS).pixels,
                                  decode_xray(data, LIMITS).pixels)
    with Image.open(io.BytesIO(stripped)) as image:
        assert image.info.get("jfif_version") == (1, 2)
        assert "icc_profile" not in image.info and "exif" not in image.info


def test_jpeg_orientation_survives_as_the_only_exif_tag():
    data = jpeg_with_names(xray(), orientation=6)
    stripped = strip_metadata(data, "jpeg")
    assert NAME.encode() not in stripped
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {0x0112: 6}
    decoded = decode_xray(stripped, LIMITS)
    assert decoded.pixels.shape == (200, 160)  # rotated by the orientation, as before
    np.testing.assert_array_equal(decoded.pixels, decode_xray(data, LIMITS).pixels)


def test_cmyk_jpeg_keeps_the_adobe_segment_it_is_decoded_by():
    image = Image.merge("CMYK", [Image.fromarray(gradient(64, 96)), *[Image.new("L", (96, 64),
                                                                                 40)] * 3])
    data = jpeg_with_names(image)
    stripped = strip_metadata(data, "jpeg")
    assert NAME.encode() not in stripped and 0xEE in jpeg_markers(stripped)
    np.testing.assert_array_equal(decode_xray(stripped, LIMITS).pixels,
                                  decode_xray(data, LIMITS).pixels)


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P"])
def test_png_loses_every_text_chunk_and_keeps_its_pixels(mode):
    base = xray()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(base, np.uint16) * 257)
    elif mode == "RGBA":
        image = base.convert("RGBA")
    else:
        image = base.convert(mode)
    data = png_with_names(image)
    kinds = png_chunk_types(data[:data.index(b"IEND") + 8])
    assert {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"tIME", b"prVt"} <= set(kinds)

    stripped = strip_metadata(data, "png")

    assert NAME.encode() not in stripped
    assert set(png_chunk_types(stripped)) <= {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND",
                                             b"gAMA", b"cHRM", b"sRGB", b"sBIT", b"bKGD",
                                             b"pHYs"}
    assert stripped.endswith(png_chunk(b"IEND", b""))
    assert b"IDAT" in png_chunk_types(stripped)
    np.testing.assert_array_equal(decode_xray(stripped, LIMITS).pixels,
                                  decode_xray(data, LIMITS).pixels)
    with Image.open(io.BytesIO(stripped)) as reopened:
        assert not getattr(reopened, "text", {})


def test_png_orientation_survives_as_the_only_exif_tag():
    data = png_with_names(xray(), orientation=8)
    stripped = strip_metadata(data, "png")
    assert NAME.encode() not in stripped
    with Image.open(io.BytesIO(stripped)) as image:
        assert dict(image.getexif()) == {0x0112: 8}
    np.testing.assert_array_equal(decode_xray(stripped, LIMITS).pixels,
                                  decode_xray(data, LIMITS).pixels)


def test_a_file_without_metadata_passes_through_unchanged_in_content():
    buffer = io.BytesIO()
    xray().save(buffer, "PNG")
    assert strip_metadata(buffer.getvalue(), "png") == buffer.getvalue()


@pytest.mark.parametrize(("data", "image_format"), [
    (b"\xff\xd8\xff\xe1\x00\x40Exif", "jpeg"),  # a segment longer than the file
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", "png"),  # cut off inside a chunk
])
def test_damaged_files_are_refused_as_corrupt(data, image_format):
    with pytest.raises(CorruptImageError):
        strip_metadata(data, image_format)
